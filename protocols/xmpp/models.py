"""What the XMPP edge last found in each bridged MUC room, for the admin."""

from __future__ import annotations

from django.db import models


class RoomLinkStatus(models.Model):
    """Written by runxmpp when a room's link settles (ready or refused); read in the admin."""

    room = models.OneToOneField("bridge.Room", on_delete=models.CASCADE, related_name="xmpp_status")
    state = models.CharField(max_length=32, help_text="ready, or refused by the room")
    affiliation = models.CharField(max_length=16, blank=True,
                                   help_text="The bridge's affiliation in the MUC room: owner when it created it.")
    lacks = models.TextField(blank=True, help_text="What the room does not give the bridge; empty: nothing.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "XMPP room status"
        verbose_name_plural = "XMPP room statuses"

    def __str__(self) -> str:
        return f"{self.room_id}: {self.state}"
