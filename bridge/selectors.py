"""Reads. Views and consumers ask these; only services write."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from bridge import sql
from bridge.access import can_read, readable_rooms
from bridge.exceptions import InvalidInput, NotFound, RoomNotFound
from bridge.models import Device, Identity, Message, Room
from bridge.names import DEVICE_ID_RULE, is_device_id, is_room_slug

MAX_HISTORY = 500


def room_get(*, slug: str) -> Room:
    if not is_room_slug(slug):
        raise RoomNotFound(f"No room {slug!r}: not a valid room name.")
    try:
        return Room.objects.get(slug=slug)
    except Room.DoesNotExist as exc:
        raise RoomNotFound(f"No room {slug!r}.") from exc


# What `room_head` reads of a room (the rest is loaded if asked for).
_HEAD_FIELDS = ["id", "slug", "private", "last_seq"]


def room_head(*, slug: str) -> Room | None:
    """The room's id, slug, privacy and last seq, or None: one hand-written query (see
    bridge/sql.py), for the publishers that ask on every wake-up."""
    row = sql.fetchone(
        f"SELECT {sql.columns(Room, _HEAD_FIELDS)} FROM {sql.table(Room)} WHERE {sql.column(Room, 'slug')} = %s",
        [slug],
    )
    return None if row is None else sql.from_row(Room, _HEAD_FIELDS, row)


def user_get(*, username: str) -> AbstractBaseUser:
    User = get_user_model()
    user: AbstractBaseUser | None = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        raise NotFound(f"No user {username!r}.", code="unknown_user")
    return user


def device_get(*, device_id: str) -> Device:
    if not is_device_id(device_id):
        raise InvalidInput(
            f"{device_id!r} is not a device id: {DEVICE_ID_RULE}.",
            code="invalid_device",
        )
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        raise NotFound(f"Unknown device {device_id!r}.", code="unknown_device")
    return device


def room_list(*, user: AbstractBaseUser | AnonymousUser | None = None) -> QuerySet[Room]:
    """The rooms the user may read (`bridge.access`)."""
    return readable_rooms(user)


def room_visible(room: Room, user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """May the user read the room (`bridge.access.can_read`)."""
    return can_read(user, room)


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


def linked_jids(*, user: AbstractBaseUser) -> list[str]:
    """The bare JIDs whose XMPP messages are this user's (`identity_link_jid`)."""
    return sorted(
        Identity.objects.filter(kind=Identity.Kind.XMPP, user=user.pk).exclude(jid="").values_list("jid", flat=True)
    )
