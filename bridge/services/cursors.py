"""Outbound edges' delivery cursors: what is stored but not yet delivered, claimed once."""

from __future__ import annotations

from django.db import IntegrityError, transaction

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


def edge_cursor_claim(*, edge: str, room: Room, limit: int = 500) -> list[Message]:
    """Claim the next undelivered messages: only the caller whose compare-and-set wins gets them.

    The cursor moves before delivery (at-most-once per claim); an edge that needs
    at-least-once delivers, then calls `edge_cursor_claim` again only on success,
    or uses `edge_cursor_pending` + `edge_cursor_advance` instead.
    """
    cursor = edge_cursor_get(edge=edge, room=room)
    messages = edge_cursor_pending(cursor=cursor, limit=limit)
    if not messages:
        return []
    if not edge_cursor_advance(cursor=cursor, to_seq=messages[-1].seq):
        return []
    return messages


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
