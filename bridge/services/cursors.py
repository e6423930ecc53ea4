"""Outbound edges' delivery cursors: what is stored but not yet delivered, and who delivers it."""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from bridge import sql
from bridge.models import EdgeCursor, Message, Room


def _edge_room() -> str:
    """The condition for one (edge, room) cursor: two parameters, the edge and the room id."""
    return f"{sql.column(EdgeCursor, 'edge')} = %s AND {sql.column(EdgeCursor, 'room')} = %s"


# The columns `edge_cursor_get` reads (`lease_until` and `updated` are loaded if asked for).
_CURSOR_FIELDS = ["id", "edge", "room_id", "seq", "lease_owner"]


def edge_cursor_get(*, edge: str, room: Room, start_at_end: bool = True) -> EdgeCursor:
    """The cursor, created on first use at the room's current end (or at 0)."""
    # Hand-written (see bridge/sql.py): every claim of every edge reads it.
    row = sql.fetchone(
        f"SELECT {sql.columns(EdgeCursor, _CURSOR_FIELDS)} FROM {sql.table(EdgeCursor)} WHERE {_edge_room()}",
        [edge, room.pk],
    )
    if row is not None:
        return sql.from_row(EdgeCursor, _CURSOR_FIELDS, row)
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
    owner_col, until_col = sql.column(EdgeCursor, "lease_owner"), sql.column(EdgeCursor, "lease_until")
    return bool(sql.execute(
        f"UPDATE {sql.table(EdgeCursor)} SET {owner_col} = %s, {until_col} = %s"
        f" WHERE ({owner_col} = '' OR {owner_col} = %s OR {until_col} < %s)"
        f" AND {sql.column(EdgeCursor, 'id')} = %s AND {sql.column(EdgeCursor, 'seq')} = %s",
        [owner, sql.when(now + timedelta(seconds=seconds)), owner, sql.when(now), cursor.pk, cursor.seq],
    ))


def edge_cursor_lease_renew(*, edge: str, room_id: int, owner: str, seconds: float) -> bool:
    """Extend `owner`'s lease; False if it lapsed and someone else holds the room now."""
    return bool(sql.execute(
        f"UPDATE {sql.table(EdgeCursor)} SET {sql.column(EdgeCursor, 'lease_until')} = %s"
        f" WHERE {_edge_room()} AND {sql.column(EdgeCursor, 'lease_owner')} = %s",
        [sql.when(timezone.now() + timedelta(seconds=seconds)), edge, room_id, owner],
    ))


def edge_cursor_delivered(*, edge: str, room_id: int, owner: str, to_seq: int) -> bool:
    """Move the cursor up to `to_seq` (never back) and give `owner`'s lease back.

    False if the lease had lapsed to another process meanwhile: it may deliver
    some of the range again (what it delivers is never lost).
    """
    cursors, seq = sql.table(EdgeCursor), sql.column(EdgeCursor, "seq")
    owner_col = sql.column(EdgeCursor, "lease_owner")
    with transaction.atomic():
        sql.execute(f"UPDATE {cursors} SET {seq} = %s WHERE {_edge_room()} AND {seq} < %s",
                    [to_seq, edge, room_id, to_seq])
        held = sql.execute(
            f"UPDATE {cursors} SET {owner_col} = '', {sql.column(EdgeCursor, 'lease_until')} = NULL"
            f" WHERE {_edge_room()} AND {owner_col} = %s",
            [edge, room_id, owner],
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
