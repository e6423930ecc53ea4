"""Reads. Views and consumers ask these; only services write."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from bridge.exceptions import InvalidInput, RoomNotFound
from bridge.models import Message, Room
from bridge.names import is_room_slug

MAX_HISTORY = 500


def room_get(*, slug: str) -> Room:
    if not is_room_slug(slug):
        raise RoomNotFound(f"No room {slug!r}: not a valid room name.")
    try:
        return Room.objects.get(slug=slug)
    except Room.DoesNotExist as exc:
        raise RoomNotFound(f"No room {slug!r}.") from exc


def room_list(*, user: AbstractBaseUser | AnonymousUser | None = None) -> QuerySet[Room]:
    rooms = Room.objects.all()
    if user is None or not user.is_authenticated:
        rooms = rooms.filter(private=False)
    return rooms


def room_visible(room: Room, user: AbstractBaseUser | AnonymousUser | None) -> bool:
    return not room.private or (user is not None and user.is_authenticated)


def message_history(
    *,
    room: Room,
    after: int | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[Message]:
    """Messages in ascending seq. Without `after`, the latest `limit` ones."""
    if limit < 1 or limit > MAX_HISTORY:
        raise InvalidInput(f"'limit' must be between 1 and {MAX_HISTORY}.", code="invalid_limit")
    messages = Message.objects.filter(room=room).select_related("sender")
    if before is not None:
        messages = messages.filter(seq__lt=before)
    if after is not None:
        return list(messages.filter(seq__gt=after).order_by("seq")[:limit])
    latest = list(messages.order_by("-seq")[:limit])
    latest.reverse()
    return latest
