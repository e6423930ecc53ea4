from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpRequest

from bridge.models import (
    AlertRule,
    AlertState,
    ApiToken,
    Device,
    DeviceCommand,
    DeviceMetric,
    Identity,
    Message,
    Presence,
    Room,
    RoomMember,
    Task,
    Telemetry,
    TelemetryRollup,
)
from bridge.services.identities import identity_get_or_create
from bridge.services.rooms import rooms_changed
from bridge.services.tokens import token_revoke


class RoomMemberInline(admin.TabularInline):
    """Who belongs to the room (users, groups, XMPP addresses); devices: on the device's page."""

    model = RoomMember
    extra = 1
    raw_id_fields = ("user",)
    fields = ("user", "group", "jid", "role")


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ("slug", "title", "private", "last_seq", "message_count", "last_message_at")
    inlines = (RoomMemberInline,)
    search_fields = ("slug", "title")
    readonly_fields = ("last_seq", "message_count", "last_message_at", "senders_24h", "created")

    def save_model(self, request: HttpRequest, obj: Room, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        transaction.on_commit(lambda: rooms_changed(slug=obj.slug))


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ("kind", "name", "user", "jid", "created")
    list_filter = ("kind",)
    search_fields = ("name", "jid")
    raw_id_fields = ("user",)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("room", "seq", "origin", "sender", "text", "created")
    list_filter = ("origin", "room")
    search_fields = ("text",)
    list_select_related = ("room", "sender")
    raw_id_fields = ("sender",)
    # seq and the key are assigned by the service; editing them would break the contract.
    readonly_fields = ("id", "room", "seq", "origin", "sender", "created", "idempotency_key")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Only the key's hash is stored: the key is shown once, in the message after adding."""

    list_display = ("user", "name", "prefix", "created", "last_used", "revoked")
    list_filter = ("revoked",)
    search_fields = ("user__username", "name", "prefix")
    raw_id_fields = ("user",)
    readonly_fields = ("prefix", "created", "last_used")
    actions = ("revoke",)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change and obj.key:
            messages.warning(
                request, f"The new token's key (copy it now, it is not shown again): {obj.key}"
            )

    @admin.action(description="Revoke the selected tokens (they fail at once)")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        for token in queryset.filter(revoked__isnull=True):
            token_revoke(token=token)


@admin.register(Presence)
class PresenceAdmin(admin.ModelAdmin):
    list_display = ("room", "identity", "connection", "since")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("name", "key", "state", "due_at", "attempts", "runs", "finished_at")
    list_filter = ("state", "name")
    search_fields = ("key",)


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("device_id", "enabled", "status", "last_seen", "created")
    list_filter = ("enabled", "status")
    search_fields = ("device_id",)
    filter_horizontal = ("post_rooms", "listen_rooms", "operators")
    readonly_fields = ("identity", "status", "last_seen", "created")

    def save_model(self, request: Any, obj: Device, form: Any, change: bool) -> None:
        if not change and obj.identity_id is None:
            # The device speaks as Identity(kind=device, name=<device id>).
            obj.identity = identity_get_or_create(kind=Identity.Kind.DEVICE, name=obj.device_id)
        super().save_model(request, obj, form, change)


@admin.register(Telemetry)
class TelemetryAdmin(admin.ModelAdmin):
    list_display = ("device", "received", "data")
    list_filter = ("device",)
    list_select_related = ("device",)
    readonly_fields = ("device", "data", "received", "client_key", "metrics", "rolled_up")


@admin.register(TelemetryRollup)
class TelemetryRollupAdmin(admin.ModelAdmin):
    list_display = ("device", "metric", "period", "start", "count", "min", "max", "mean", "last")
    list_filter = ("period", "device")
    list_select_related = ("device",)
    search_fields = ("metric",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # written by the telemetry worker only


@admin.register(DeviceMetric)
class DeviceMetricAdmin(admin.ModelAdmin):
    list_display = ("device", "metric", "value", "unit", "at")
    list_filter = ("device",)
    list_select_related = ("device",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "device", "room", "metric", "condition", "threshold", "low", "high",
                    "silent_seconds", "hysteresis", "hold_seconds", "enabled")
    list_filter = ("condition", "enabled")
    filter_horizontal = ("notify_rooms",)
    raw_id_fields = ("device",)


@admin.register(AlertState)
class AlertStateAdmin(admin.ModelAdmin):
    list_display = ("rule", "device", "state", "since", "value", "updated")
    list_filter = ("state",)
    list_select_related = ("rule", "device")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DeviceCommand)
class DeviceCommandAdmin(admin.ModelAdmin):
    list_display = ("device", "text", "sender", "origin", "created", "published_at")
    list_filter = ("origin",)
    list_select_related = ("device", "sender")
    readonly_fields = ("device", "text", "sender", "origin", "message", "created", "published_at")
