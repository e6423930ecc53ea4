"""The product's own background work."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Max
from django.utils import timezone

from bridge.models import Message, Room
from bridge.tasks.registry import task


@task("room_stats")
def room_stats(*, room: int) -> None:
    """Message count, last activity and distinct senders of the last day, for the room list."""
    since = timezone.now() - timedelta(days=1)
    messages = Message.objects.filter(room_id=room)
    last = messages.aggregate(last=Max("created"))["last"]
    senders = messages.filter(created__gte=since).values("sender_id").distinct().count()
    Room.objects.filter(pk=room).update(
        message_count=messages.count(), last_message_at=last, senders_24h=senders
    )


@task("retention")
def retention(*, room: int, days: int) -> None:
    """Delete a room's messages older than `days` (the room's or the global retention)."""
    cutoff = timezone.now() - timedelta(days=days)
    Message.objects.filter(room_id=room, created__lt=cutoff).delete()
