"""The XMPP edge's reads and writes, each one call into the bridge's selectors and services.

Synchronous: the consumer calls them through `database_sync_to_async`.
"""

from __future__ import annotations

from bridge.envelope import Envelope, Sender, message_envelope
from bridge.models import Identity, Room
from bridge.selectors import message_history, room_list
from bridge.services.cursors import edge_cursor_advance, edge_cursor_get
from bridge.services.identities import identity_get_or_create
from bridge.services.presence import presence_list

EDGE = "xmpp"


def bridged_rooms() -> list[tuple[str, int, str]]:
    """(slug, pk, title) of every room XMPP clients may join: the public ones."""
    return [(room.slug, room.pk, room.display_title) for room in room_list(user=None)]


def cursor_seq(*, room_pk: int) -> int:
    return edge_cursor_get(edge=EDGE, room=Room(pk=room_pk)).seq


def cursor_advance(*, room_pk: int, to_seq: int) -> int:
    """Move the cursor forward to `to_seq` (never back); returns where it is now."""
    cursor = edge_cursor_get(edge=EDGE, room=Room(pk=room_pk))
    if cursor.seq >= to_seq or edge_cursor_advance(cursor=cursor, to_seq=to_seq):
        return max(cursor.seq, to_seq)
    # Someone else moved it in between (a second runxmpp): theirs is as good as ours.
    return edge_cursor_get(edge=EDGE, room=Room(pk=room_pk)).seq


def messages_after(*, room_pk: int, slug: str, after: int, limit: int) -> list[Envelope]:
    room = Room(pk=room_pk, slug=slug)
    return [message_envelope(m, room_slug=slug) for m in message_history(room=room, after=after, limit=limit)]


def present_senders(*, room_pk: int) -> list[Sender]:
    return [
        {"kind": identity.kind, "name": identity.name}
        for identity in presence_list(room=Room(pk=room_pk))
    ]


def occupant_identity(*, nick: str, real_jid: str) -> Identity:
    bare = real_jid.partition("/")[0]
    return identity_get_or_create(kind=Identity.Kind.XMPP, name=nick, jid=bare)
