from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from bridge.views import alerts, api, devices, members, metrics, pages
from protocols.xmpp import views as xmpp_views

urlpatterns = [
    path("", pages.index, name="index"),
    path("rooms/<str:room>/", pages.room, name="room"),
    path("api/rooms/", api.rooms, name="api-rooms"),
    path("api/rooms/<str:room>/messages", api.messages, name="api-messages"),
    path("api/rooms/<str:room>/messages/", api.messages),  # the same, for slash habits
    path("api/rooms/<str:room>/members", members.members, name="api-room-members"),
    path("api/rooms/<str:room>/members/<str:kind>/<str:name>", members.member, name="api-room-member"),
    path("api/devices/<str:device>/commands", devices.commands, name="api-device-commands"),
    path("api/devices/<str:device>/telemetry", devices.telemetry, name="api-device-telemetry"),
    path("api/rooms/<str:room>/devices", devices.room_devices_list, name="api-room-devices"),
    path("api/alerts/rules", alerts.rules, name="api-alert-rules"),
    path("api/alerts/rules/<int:rule_id>", alerts.rule, name="api-alert-rule"),
    path("healthz", api.healthz, name="healthz"),
    path("readyz", api.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("accounts/xmpp/", xmpp_views.account, name="xmpp-account"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
