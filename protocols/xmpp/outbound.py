"""The outbound pump: what the web and MQTT stored, said in the room, in order, once.

The database is the source of truth: a `room.message` only wakes the room's
pump, which sends what is stored after the `xmpp` edge cursor, in order, from
each sender's puppet. The cursor moves when the room echoes a message back to
the relay (the room has it, and archived it), so a drop of the stream resends
exactly what was not confirmed; after a rejoin, the room's replayed history
tells which of those arrived anyway.

Nothing holds the pump for long: a puppet the room refuses (or does not
answer within `join_timeout`) speaks through the relay, as "<name> text";
a message the room bounces is sent again up to `MAX_FAILURES` times, then
skipped with a log line; one the room neither echoes nor bounces within
`echo_timeout` counts as bounced.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from bridge.envelope import Envelope
from bridge.instruments import delivered
from protocols.xmpp import store
from protocols.xmpp.events import XmppMessageEvent
from protocols.xmpp.link import InFlight, PuppetState, RoomLink, sender_key

if TYPE_CHECKING:
    from protocols.xmpp.consumers import BridgeXmppConsumer

logger = logging.getLogger(__name__)

ID_PREFIX = "bridge-"
# A message the room refuses this often is skipped (with a log line) so the room is not stuck.
MAX_FAILURES = 3
# Stored messages read per query, kept until sent (`Pump._pending`): larger than the window,
# since most may need no sending (they came from XMPP) and those cost no window.
PAGE = 100


def relayed_body(envelope: Envelope) -> str:
    """The documented fallback when a sender's puppet cannot be in the room."""
    return f"<{envelope['sender']['name']}> {message_body(envelope)}"


def message_body(envelope: Envelope) -> str:
    if envelope["text"]:
        return envelope["text"]
    # A data-only message (telemetry, alerts): XMPP clients see it as JSON.
    return json.dumps(envelope["data"], sort_keys=True)


class Pump:
    """The outbound part of the bridge's XMPP consumer."""

    def __init__(self, edge: BridgeXmppConsumer) -> None:
        self.edge = edge

    async def pump(self, link: RoomLink) -> None:
        """Send what is stored after what was sent, in order, while the window has room."""
        while self.edge.connected and link.ready and link.window_left() > 0:
            pending = await self._pending(link)
            if not pending:
                break
            confirmed, joining = None, False
            while pending:
                envelope = pending[0]
                if self._nothing_to_send(link, envelope):
                    # One cursor write for a run of these, not one each (a burst from XMPP).
                    confirmed = link.skip(envelope["seq"]) or confirmed
                elif link.window_left() <= 0:
                    break
                elif not await self._send_one(link, envelope):
                    joining = True  # a puppet is joining: its answer (or its timeout) pumps again
                    break
                pending.popleft()
                link.ahead_upto = link.sent_upto
            await self._advance_to(link, confirmed)
            if joining:
                return
        if not link.inflight:
            for puppet in list(link.puppets.values()):
                if not puppet.online:
                    await self.edge.occupants.leave_if_idle(link, puppet)

    @staticmethod
    async def _pending(link: RoomLink) -> deque[Envelope]:
        """What is stored after `sent_upto`, in order: read a page at a time and kept on the
        link, so that the sends each echo allows cost no query (in a profile of the
        end_to_end scenario, reading a few rows after every echo was 15 % of runxmpp).
        Read again when it ran out, or when `sent_upto` moved other than by taking from it
        (a rewind, a rejoin)."""
        if not link.ahead or link.ahead_upto != link.sent_upto:
            link.ahead = deque(await database_sync_to_async(store.messages_after)(
                room_pk=link.room_pk, slug=link.slug, after=link.sent_upto, limit=PAGE
            ))
            link.ahead_upto = link.sent_upto
        return link.ahead

    @staticmethod
    def _nothing_to_send(link: RoomLink, envelope: Envelope) -> bool:
        """From XMPP (the room has it), or in the room already (seen in its join history)."""
        return envelope["origin"] == "xmpp" or link.in_room_already(f"{ID_PREFIX}{envelope['id']}",
                                                                       envelope["sender"])

    async def _send_one(self, link: RoomLink, envelope: Envelope) -> bool:
        message_id = f"{ID_PREFIX}{envelope['id']}"
        sender_jid, key, body = link.relay_jid, None, message_body(envelope)
        if envelope["sender"]["kind"] != "system":
            puppet = link.puppet(envelope["sender"])
            if puppet.state is PuppetState.OUT or (
                puppet.state is PuppetState.FAILED and time.monotonic() >= puppet.retry_at
            ):
                await self.edge.occupants.join_puppet(link, puppet)
                return False
            if puppet.state is PuppetState.JOINING:
                return False
            if puppet.state is PuppetState.IN:
                sender_jid, key = puppet.jid, sender_key(puppet.sender)
            else:
                body = relayed_body(envelope)
        await self.edge.send_message(sender=sender_jid, to=link.room_jid, body=body, id=message_id)
        delivered("xmpp")
        link.inflight.append(InFlight(seq=envelope["seq"], message_id=message_id, puppet=key,
                                      sent_at=time.monotonic()))
        link.sent_upto = envelope["seq"]
        return True

    # --- what the room says about ours --------------------------------------------------

    async def echoed(self, link: RoomLink, message_ids: list[str]) -> None:
        """The room reflected these of ours (in order): it has them (and archived them)."""
        confirmed = None
        for message_id in message_ids:
            confirmed = link.ack(message_id) or confirmed
        await self._advance_to(link, confirmed)
        await self.pump(link)

    async def bounced(self, link: RoomLink, event: XmppMessageEvent) -> None:
        """The room (or the server) returned one of ours as an error."""
        ours = event["origin_id"] or event["id"]
        entry = next((e for e in link.inflight if e.message_id == ours), None)
        if entry is None:
            return
        await self._failed(link, entry, event["error_condition"] or "error")

    async def _failed(self, link: RoomLink, entry: InFlight, reason: str) -> None:
        count = link.failures[entry.seq] = link.failures.get(entry.seq, 0) + 1
        logger.warning("xmpp: %s refused seq %s of %s (%s, attempt %d)", link.room_jid, entry.seq,
                       link.slug, reason, count)
        if count >= MAX_FAILURES:
            logger.error("xmpp: giving up on seq %s of %s", entry.seq, link.slug)
            await self._advance_to(link, link.ack(entry.message_id))
        else:
            if entry.puppet is not None and entry.puppet in link.puppets:
                puppet = link.puppets[entry.puppet]
                if puppet.state is PuppetState.IN:
                    puppet.state = PuppetState.OUT  # most refusals: not an occupant (any more)
            self.rewind(link)
        await self.pump(link)

    async def tick(self, link: RoomLink) -> None:
        """A message the room neither echoed nor bounced in time counts as bounced."""
        if link.ready and link.inflight:
            oldest = next((e for e in link.inflight if not e.acked), None)
            if oldest is not None and time.monotonic() - oldest.sent_at > self.edge.config.echo_timeout:
                await self._failed(link, oldest, "no echo")

    def rewind(self, link: RoomLink) -> None:
        link.inflight.clear()
        link.ahead.clear()
        link.sent_upto = link.cursor_seq

    async def _advance_to(self, link: RoomLink, to_seq: int | None) -> None:
        if to_seq is None:
            return
        link.cursor_seq = await database_sync_to_async(store.cursor_advance)(
            room_pk=link.room_pk, to_seq=to_seq
        )
        link.failures = {seq: n for seq, n in link.failures.items() if seq > link.cursor_seq}
