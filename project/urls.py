from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from bridge.views import api, devices, pages

urlpatterns = [
    path("", pages.index, name="index"),
    path("rooms/<str:room>/", pages.room, name="room"),
    path("api/rooms/", api.rooms, name="api-rooms"),
    path("api/rooms/<str:room>/messages", api.messages, name="api-messages"),
    path("api/rooms/<str:room>/messages/", api.messages),  # the same, for slash habits
    path("api/devices/<str:device>/commands", devices.commands, name="api-device-commands"),
    path("healthz", api.healthz, name="healthz"),
    path("readyz", api.readyz, name="readyz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
