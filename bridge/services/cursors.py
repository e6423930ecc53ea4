"""Outbound edges' delivery cursors: what is stored but not yet delivered, and who delivers it."""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from bridge.models import EdgeCursor, Message, Room


def edge_cursor_get(*, edge: str, room: Room, start_at_end: bool = True) -> EdgeCursor:
    """The cursor, created on first use at the room's current end (or at 0)."""
    cursor = EdgeCursor.objects.filter(edge=edge, room=room).first()
    if cursor is not None:
        return cursor
    try:
        with transaction.atomic():
            seq = Room.objects.values_list("last_seq", flat=True).get(pk=room.pk) if start_at_end else 0
            return EdgeCursor.objects.create(edge=edge, room=room, seq=seq)
    except IntegrityError:
        return EdgeCursor.objects.get(edge=edge, room=room)


def edge_cursor_lease(
    *, edge: str, room: Room, owner: str, seconds: float, limit: int = 500
) -> list[Message]:
    """The next undelivered messages, leased to `owner` for `seconds`; [] if another holds them.

    For at-least-once delivery: the cursor does not move here. The owner
    delivers, renews the lease while it waits for confirmations
    (`edge_cursor_lease_renew`), then moves the cursor past what was delivered
    and gives the lease back (`edge_cursor_delivered`). While a lease is live no
    one else gets the room, so several processes never deliver a range twice;
    when its owner dies, the lease lapses and the next caller (the same owner
    at once, anyone else after `seconds`) gets the range again from the cursor.
    """
    cursor = edge_cursor_get(edge=edge, room=room)
    messages = edge_cursor_pending(cursor=cursor, limit=limit)
    if not messages:
        return []
    return messages if edge_cursor_lease_from(cursor=cursor, owner=owner, seconds=seconds) else []


def edge_cursor_lease_from(*, cursor: EdgeCursor, owner: str, seconds: float) -> bool:
    """Lease what follows `cursor` (as the caller read it) to `owner`: one UPDATE.

    False if another process holds a live lease, or the cursor moved since it
    was read (a holder delivered meanwhile): the caller then has nothing to deliver.
    """
    now = timezone.now()
    free = Q(lease_owner="") | Q(lease_owner=owner) | Q(lease_until__lt=now)
    return bool(EdgeCursor.objects.filter(free, pk=cursor.pk, seq=cursor.seq).update(
        lease_owner=owner, lease_until=now + timedelta(seconds=seconds)
    ))


def edge_cursor_lease_renew(*, edge: str, room_id: int, owner: str, seconds: float) -> bool:
    """Extend `owner`'s lease; False if it lapsed and someone else holds the room now."""
    return bool(
        EdgeCursor.objects.filter(edge=edge, room_id=room_id, lease_owner=owner).update(
            lease_until=timezone.now() + timedelta(seconds=seconds)
        )
    )


def edge_cursor_delivered(*, edge: str, room_id: int, owner: str, to_seq: int) -> bool:
    """Move the cursor up to `to_seq` (never back) and give `owner`'s lease back.

    False if the lease had lapsed to another process meanwhile: it may deliver
    some of the range again (what it delivers is never lost).
    """
    with transaction.atomic():
        EdgeCursor.objects.filter(edge=edge, room_id=room_id, seq__lt=to_seq).update(seq=to_seq)
        held = EdgeCursor.objects.filter(edge=edge, room_id=room_id, lease_owner=owner).update(
            lease_owner="", lease_until=None
        )
    return bool(held)


def edge_cursor_pending(*, cursor: EdgeCursor, limit: int = 500) -> list[Message]:
    return list(
        Message.objects.filter(room_id=cursor.room_id, seq__gt=cursor.seq)
        .select_related("sender", "room")
        .order_by("seq")[:limit]
    )


def edge_cursor_advance(*, cursor: EdgeCursor, to_seq: int) -> bool:
    """Move the cursor from where the caller saw it to `to_seq`; False if someone else did."""
    moved = EdgeCursor.objects.filter(pk=cursor.pk, seq=cursor.seq).update(seq=to_seq)
    if moved:
        cursor.seq = to_seq
    return bool(moved)
