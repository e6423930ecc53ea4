from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from protocols.xmpp.models import RoomLinkStatus


@admin.register(RoomLinkStatus)
class RoomLinkStatusAdmin(admin.ModelAdmin):
    """Read-only: runxmpp writes it; it says which rooms are bridged fully and what others lack."""

    list_display = ("room", "state", "affiliation", "lacks", "updated")
    list_filter = ("state", "affiliation")
    readonly_fields = ("room", "state", "affiliation", "lacks", "updated")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
