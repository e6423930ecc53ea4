"""The XMPP edge's reads and writes, each one call into the bridge's selectors and services.

Synchronous: the consumer calls them through `database_sync_to_async`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from bridge.access import room_member_jids
from bridge.envelope import Envelope, Sender, message_envelope
from bridge.exceptions import BridgeError
from bridge.models import Identity, Message, Presence, Room
from bridge.selectors import message_history, room_get
from bridge.services.cursors import edge_cursor_advance, edge_cursor_get
from bridge.services.identities import identity_for_jid, identity_get_or_create
from bridge.services.messages import NewMessage, PostResult, message_store_many
from bridge.services.presence import (
    presence_join,
    presence_leave,
    presence_list,
    presence_renew,
)
from protocols.xmpp.models import RoomLinkStatus

EDGE = "xmpp"
# The `Presence.connection` of an XMPP occupant: "xmpp:<nick>".
OCCUPANT_PREFIX = "xmpp:"


@dataclass(frozen=True)
class BridgedRoom:
    slug: str
    pk: int
    title: str
    private: bool


def bridged_rooms() -> list[BridgedRoom]:
    """Every room: public ones as public MUC rooms, private ones as members-only rooms."""
    return [
        BridgedRoom(slug=room.slug, pk=room.pk, title=room.display_title, private=room.private)
        for room in Room.objects.order_by("slug")
    ]


def member_jids(*, room_pk: int) -> set[str]:
    """The bare JIDs a private room's MUC admits (see `bridge.access.room_member_jids`)."""
    return room_member_jids(Room.objects.get(pk=room_pk))


def cursor_seq(*, room_pk: int) -> int:
    return edge_cursor_get(edge=EDGE, room=Room(pk=room_pk)).seq


def cursor_advance(*, room_pk: int, to_seq: int) -> int:
    """Move the cursor forward to `to_seq` (never back); returns where it is now."""
    cursor = edge_cursor_get(edge=EDGE, room=Room(pk=room_pk))
    if cursor.seq >= to_seq or edge_cursor_advance(cursor=cursor, to_seq=to_seq):
        return max(cursor.seq, to_seq)
    # Someone else moved it in between (a second runxmpp): theirs is as good as ours.
    return edge_cursor_get(edge=EDGE, room=Room(pk=room_pk)).seq


def unconfirmed_after(*, room_pk: int, after: int) -> bool:
    """Messages to say in the room after the cursor: an earlier process may have sent some
    of them before it stopped (the cursor moves only on the room's echo)."""
    return Message.objects.filter(room_id=room_pk, seq__gt=after).exclude(origin="xmpp").exists()


def messages_after(*, room_pk: int, slug: str, after: int, limit: int) -> list[Envelope]:
    room = Room(pk=room_pk, slug=slug)
    return [message_envelope(m, room_slug=slug) for m in message_history(room=room, after=after, limit=limit)]


def present_senders(*, room_pk: int) -> list[Sender]:
    """Who is in the room and needs a puppet there: present through the web or MQTT. A user
    present only through their own linked XMPP account is in the room already."""
    room = Room(pk=room_pk)
    in_person = set(
        Presence.objects.filter(room=room, connection__startswith=OCCUPANT_PREFIX)
        .values_list("identity", flat=True)
    )
    elsewhere = set(
        Presence.objects.filter(room=room).exclude(connection__startswith=OCCUPANT_PREFIX)
        .values_list("identity", flat=True)
    )
    return [
        {"kind": identity.kind, "name": identity.name}
        for identity in presence_list(room=room)
        if identity.pk in elsewhere or identity.pk not in in_person
    ]


def occupant_identity(*, nick: str, real_jid: str) -> Identity:
    """The sender behind an occupant: by its real JID where the room shows it (see
    `identity_for_jid`); in a room that hides JIDs, the nick is all there is."""
    if real_jid:
        return identity_for_jid(jid=real_jid, nick=nick)
    return identity_get_or_create(kind=Identity.Kind.XMPP, name=nick)


@dataclass(frozen=True)
class OccupantMessage:
    nick: str
    real_jid: str
    text: str
    client_key: str | None


def occupant_messages_store(*, slug: str, messages: list[OccupantMessage]) -> list[PostResult | BridgeError]:
    """What occupants said in one room, stored in one transaction, in order: one result each
    (the row, stored now or before under the same key, or the error that refused it).
    Each sender is looked up once per batch."""
    room = room_get(slug=slug)
    senders: dict[tuple[str, str], Identity | BridgeError] = {}
    wanted: list[NewMessage] = []
    refused: dict[int, BridgeError] = {}
    for index, said in enumerate(messages):
        who = (said.nick, said.real_jid)
        if who not in senders:
            try:
                senders[who] = occupant_identity(nick=said.nick, real_jid=said.real_jid)
            except BridgeError as exc:
                senders[who] = exc
        sender = senders[who]
        if isinstance(sender, BridgeError):
            refused[index] = sender
        else:
            wanted.append(NewMessage(sender=sender, origin="xmpp", text=said.text, client_key=said.client_key))
    results = iter(message_store_many(room=room, messages=wanted) if wanted else [])
    return [refused[i] if i in refused else next(results) for i in range(len(messages))]


def _occupant_connection(nick: str) -> str:
    return f"{OCCUPANT_PREFIX}{nick}"


def occupant_online(*, room_pk: int, nick: str, real_jid: str, ttl: timedelta) -> Sender | None:
    """An XMPP occupant is in the room: recorded, and returned if that is news."""
    identity = occupant_identity(nick=nick, real_jid=real_jid)
    first = presence_join(
        room=Room(pk=room_pk), identity=identity, connection=_occupant_connection(nick), ttl=ttl
    )
    return identity.as_sender() if first else None  # type: ignore[return-value]


def occupant_offline(*, room_pk: int, nick: str) -> Sender | None:
    gone = presence_leave(room=Room(pk=room_pk), connection=_occupant_connection(nick))
    return gone.as_sender() if gone is not None else None  # type: ignore[return-value]


def occupants_renew(*, ttl: timedelta) -> None:
    """The edge is alive: its occupants' presence must not expire (see `presence_sweep`)."""
    for row in Presence.objects.filter(connection__startswith=OCCUPANT_PREFIX).values_list("connection", flat=True).distinct():
        presence_renew(connection=row, ttl=ttl)


def link_status(*, room_pk: int, state: str, affiliation: str, lacks: list[str]) -> None:
    """What the room gives the bridge, for the admin (`RoomLinkStatus`)."""
    RoomLinkStatus.objects.update_or_create(
        room_id=room_pk,
        defaults={"state": state, "affiliation": affiliation, "lacks": "; ".join(lacks)},
    )
