from django.contrib import admin

from bridge.models import ApiToken, Identity, Message, Presence, Room, Task


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ("slug", "title", "private", "last_seq", "message_count", "last_message_at")
    search_fields = ("slug", "title")
    readonly_fields = ("last_seq", "message_count", "last_message_at", "senders_24h", "created")


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
    list_display = ("user", "name", "created")
    readonly_fields = ("key", "created")


@admin.register(Presence)
class PresenceAdmin(admin.ModelAdmin):
    list_display = ("room", "identity", "connection", "since")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("name", "key", "state", "due_at", "attempts", "runs", "finished_at")
    list_filter = ("state", "name")
    search_fields = ("key",)
