"""What the MQTT edge publishes: room messages and device commands, each claimed once.

These run in a database thread. Room messages: lease, publish, then move the
cursor. A lease on the room's `EdgeCursor` (edge "mqtt") decides which runmqtt
process publishes the messages after the cursor; it moves the cursor only past
what the broker accepted (or refused for good), so a crash before the PUBACKs
means the range is published again by the next holder of the lease: at least
once (receivers drop what they have by `seq`). Commands: claim-then-publish on
the command's `published_at`, at most once (a command may act on the world).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction

from bridge import writelock
from bridge.access import actor_of, check_chat_command
from bridge.envelope import Envelope, message_envelope
from bridge.exceptions import BridgeError
from bridge.models import DeviceCommand, Message, Room
from bridge.names import parse_chat_command
from bridge.selectors import room_head
from bridge.services.cursors import (
    edge_cursor_delivered,
    edge_cursor_get,
    edge_cursor_lease,
    edge_cursor_lease_from,
    edge_cursor_lease_renew,
)
from bridge.services.devices import (
    CommandOut,
    device_command_create,
    device_commands_claim,
)

logger = logging.getLogger(__name__)

EDGE = "mqtt"
CLAIM_LIMIT = 500
# (room id, after seq, up to seq) -> those envelopes in order, or None (see room_claim).
Recent = Callable[[int, int, int], "list[Envelope] | None"]


@dataclass
class Claimed:
    room_id: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    commands: list[CommandOut] = field(default_factory=list)
    # More may be waiting (a full batch was claimed).
    more: bool = False
    # The room is private: published only where the broker keeps it to its members.
    private: bool = False


def rooms_track(*, known: set[str], started: datetime) -> list[str]:
    """Every room's slug, making sure each has an MQTT cursor before anything is claimed.

    Rooms created after this process started begin at 0 (nothing in them is
    older than us); older rooms begin at their end (history is not replayed).
    """
    slugs = []
    for room in Room.objects.only("id", "slug", "created"):
        if room.slug not in known:
            edge_cursor_get(edge=EDGE, room=room, start_at_end=room.created < started)
        slugs.append(room.slug)
    return slugs


def room_claim(*, slug: str, owner: str, lease: float, recent: Recent | None = None) -> Claimed:
    """Lease the room's unpublished messages to `owner`, and claim the commands some of
    them give devices; nothing if another process holds the room's lease.

    `recent(room_id, after, upto)` gives the envelopes of seq after+1..upto when this
    process has them all in memory (it stored them), else None. Then the range is
    leased with one UPDATE and not read back, unless one of them is a chat command
    (those go the long way, which decides and claims the command).
    """
    room = room_head(slug=slug)
    claimed = Claimed()
    if room is None:
        return claimed
    claimed.room_id, claimed.private = room.pk, room.private
    cursor = edge_cursor_get(edge=EDGE, room=room)
    if room.last_seq <= cursor.seq:
        return claimed  # nothing after the cursor: no transaction (most sweeps and wake-ups)
    if recent is not None:
        upto = min(room.last_seq, cursor.seq + CLAIM_LIMIT)
        envelopes = recent(room.pk, cursor.seq, upto)
        if envelopes is not None and not any(parse_chat_command(e["text"]) for e in envelopes):
            with writelock.held():
                leased = edge_cursor_lease_from(cursor=cursor, owner=owner, seconds=lease)
            if leased:
                claimed.envelopes, claimed.more = envelopes, upto < room.last_seq
            return claimed
    # The lease and the commands found in the range commit together. A range leased
    # again (its holder died) finds its commands already claimed: they are not resent.
    with writelock.held(), transaction.atomic():
        messages = edge_cursor_lease(edge=EDGE, room=room, owner=owner, seconds=lease, limit=CLAIM_LIMIT)
        claimed.more = len(messages) == CLAIM_LIMIT
        command_ids = [c.pk for c in (_command_from(m) for m in messages) if c is not None]
        claimed.envelopes = [message_envelope(m, room_slug=slug) for m in messages]
        if command_ids:
            claimed.commands = device_commands_claim(ids=command_ids)
    return claimed


def _command_from(message: Message) -> DeviceCommand | None:
    parsed = parse_chat_command(message.text)
    if parsed is None:
        return None
    device_id, text = parsed
    # Who may command a device from chat: by default signed-in users (web and API),
    # not XMPP occupants or other devices; and only in a room the device is in.
    if message.sender.kind not in settings.MQTT_CHAT_COMMAND_SENDERS:
        logger.info("room %s #%s: /cmd from a %s sender ignored (MQTT_CHAT_COMMAND_SENDERS)",
                    message.room.slug, message.seq, message.sender.kind)
        return None
    # The edges that take posts refuse these already (bridge.access); this catches
    # senders that were allowed then and are not now, and edges that do not check.
    try:
        check_chat_command(actor_of(message.sender), message.room, message.text)
    except BridgeError as exc:
        logger.info("room %s #%s: /cmd for %s refused: %s", message.room.slug, message.seq,
                    device_id, exc.detail)
        return None
    try:
        return device_command_create(
            device_id=device_id,
            text=text,
            sender=message.sender,
            origin=message.origin,
            message=message,
        )
    except BridgeError as exc:
        logger.info("room %s #%s: no command for %s: %s", message.room.slug, message.seq, device_id, exc.detail)
        return None


def room_lease_renew(*, room_id: int, owner: str, lease: float) -> bool:
    with writelock.held():
        return edge_cursor_lease_renew(edge=EDGE, room_id=room_id, owner=owner, seconds=lease)


def room_delivered(*, room_id: int, owner: str, to_seq: int) -> bool:
    """The broker has everything up to `to_seq`: move the cursor, give the lease back."""
    with writelock.held():
        return edge_cursor_delivered(edge=EDGE, room_id=room_id, owner=owner, to_seq=to_seq)


def commands_claim() -> list[CommandOut]:
    """Commands recorded by the API (or missed by a crashed process) that nobody published yet."""
    return device_commands_claim()
