"""Messages in: what XMPP occupants say (stored once), the room's echoes of ours, direct messages.

Inbound, a message is stored once: keyed by the sender's XEP-0359 origin-id,
else the room's stanza-id. History replayed on join (`<delay/>`) and the
bridge's own occupants are never bridged back. Refusals are XMPP errors to the
sender's real JID, with a log line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from bridge.exceptions import BridgeError, RateLimited
from bridge.instruments import refused
from bridge.ratelimit import athrottle
from bridge.services.messages import PostResult, messages_fanout
from protocols.xmpp import store
from protocols.xmpp.addresses import Jid, occupant_jid, room_jid
from protocols.xmpp.events import XmppMessageEvent
from protocols.xmpp.link import RoomLink
from protocols.xmpp.linking import LinkRefused, link_by_token
from protocols.xmpp.outbound import ID_PREFIX

if TYPE_CHECKING:
    from protocols.xmpp.consumers import BridgeXmppConsumer

logger = logging.getLogger(__name__)

NOTICE_EVERY = 1.0  # seconds between rate-limit errors to one sender (the rest are counted)
MAX_TOLD = 10_000  # senders remembered for that; the oldest are forgotten first


@dataclass(frozen=True)
class _Said:
    """An occupant's message, admitted (rate limit), waiting for its batch's store."""

    link: RoomLink
    nick: str
    real_jid: str
    event: XmppMessageEvent


@dataclass
class _Batch:
    """What a batch of stanzas leaves to do once it is read: occupants' messages to store,
    and per room the echoes of ours to confirm (one cursor write and one pump per room)."""

    said: list[_Said] = field(default_factory=list)
    echoes: dict[str, tuple[RoomLink, list[str]]] = field(default_factory=dict)


class Inbound:
    """The inbound part of the bridge's XMPP consumer."""

    def __init__(self, edge: BridgeXmppConsumer) -> None:
        self.edge = edge
        # Rate refusals told per sender: at most one error each NOTICE_EVERY seconds, with how
        # many went unbridged since. An error per refused stanza doubled what a flooder costs
        # the XMPP server (measured: Prosody's echo to everyone else stalled 1.4 s at p99).
        self._told: dict[str, tuple[float, int]] = {}

    async def messages(self, events: list[XmppMessageEvent]) -> None:
        """Stanzas that arrived back to back, handled in order; what occupants said is then
        stored in one transaction per room and fanned out once (a burst costs one store, not
        one per message). Run again after a database or Redis error (see the consumer's
        dispatch): nothing of a failed store is written, and the origin-id or stanza-id makes
        a message stored already come back as the same row."""
        batch = _Batch()
        for event in events:
            await self._message(event, batch)
        await self._confirm(batch)
        if batch.said:
            await self._store(batch.said)

    async def _confirm(self, batch: _Batch) -> None:
        """The room echoed these of ours: the cursor moves, and the pump sends what is next."""
        echoes, batch.echoes = batch.echoes, {}
        for link, message_ids in echoes.values():
            await self.edge.pump.echoed(link, message_ids)

    async def _message(self, event: XmppMessageEvent, batch: _Batch) -> None:
        edge = self.edge
        sender = Jid.parse(event["sender"])
        to = Jid.parse(event["to"])
        link = edge.rooms.get(sender.local) if sender.domain == edge.muc.lower() else None
        if link is not None and event["to"] == link.relay_jid:
            await self._in_room(link, sender.resource, event, batch)
        elif link is not None and link.puppet_by_jid(event["to"]) is not None:
            await self._to_puppet(link, event, batch)
        elif event["message_type"] == "error":
            return  # never answer an error: that is how loops start
        elif to.domain == edge.component.lower() and not to.local:
            await self._direct(event)
        else:
            logger.info("xmpp: refused a message from %s to unknown address %s",
                        event["sender"], event["to"])
            await edge.send_error(
                sender=event["to"], to=event["sender"], id=event["id"],
                condition="item-not-found", error_type="cancel",
                text=f"No such room or user here. Rooms are on {edge.muc}; send 'help' to {edge.component}.",
            )

    async def _in_room(self, link: RoomLink, nick: str, event: XmppMessageEvent, batch: _Batch) -> None:
        if event["message_type"] == "error":
            await self._confirm(batch)  # echoes that came before it count first, as they came
            await self.edge.pump.bounced(link, event)
            return
        if event["message_type"] != "groupchat":
            return
        if event["subject"] is not None and not event["body"]:
            return  # a subject change (or the subject sent on join)
        ours = event["origin_id"] if event["origin_id"].startswith(ID_PREFIX) else event["id"]
        if event["delayed"]:
            # Only while joining (the replayed history, the archive's answers): once ready, an
            # occupant's own <delay/> would otherwise grow this map without bound.
            if ours.startswith(ID_PREFIX) and not link.ready:
                link.in_room[ours] = nick  # whose it is: decided when the pump gets to it
            return  # the history a room replays on join is never stored again
        if link.is_ours(nick):
            if ours.startswith(ID_PREFIX):
                batch.echoes.setdefault(link.slug, (link, []))[1].append(ours)
            return
        if not nick or not event["body"]:
            return
        await self._from_occupant(link, nick, event, batch)

    async def _from_occupant(self, link: RoomLink, nick: str, event: XmppMessageEvent, batch: _Batch) -> None:
        """An XMPP occupant spoke: admitted, it is stored with its batch (`_store`), once, as
        its sender; refusals go back to it."""
        real = link.real_jid(nick)
        key = link.sender_id(nick)
        try:
            # One budget per account across every runxmpp (Redis), XMPP_RATE and XMPP_BURST.
            await athrottle("xmpp", key)
        except BridgeError as exc:
            await self._refused(link, nick, event, exc)
            if exc.code == "rate_limited":
                await self.edge.moderation.refused(link, nick, key)
            return
        self.edge.moderation.admitted(link, key)
        # Who the sender is, as of now: a later stanza of the batch may change the nick's JID.
        batch.said.append(_Said(link=link, nick=nick, real_jid=real, event=event))

    async def _store(self, said: list[_Said]) -> None:
        by_room: dict[str, list[_Said]] = {}
        for item in said:
            by_room.setdefault(item.link.slug, []).append(item)
        stored = []
        for slug, items in by_room.items():
            wanted = [
                store.OccupantMessage(nick=i.nick, real_jid=i.real_jid, text=i.event["body"],
                                      client_key=i.event["origin_id"] or i.event["stanza_id"] or None)
                for i in items
            ]
            results: list[PostResult | BridgeError]
            try:
                results = await database_sync_to_async(store.occupant_messages_store)(slug=slug, messages=wanted)
            except BridgeError as exc:  # the room itself is gone
                results = [exc] * len(items)
            for item, result in zip(items, results, strict=True):
                if isinstance(result, BridgeError):
                    await self._refused(item.link, item.nick, item.event, result)
                else:
                    # Stored before, too (a resent origin-id): told again; receivers dedupe by seq.
                    stored.append(result.envelope)
        if stored:
            await messages_fanout(stored)

    async def _refused(self, link: RoomLink, nick: str, event: XmppMessageEvent, exc: BridgeError) -> None:
        if exc.code == "rate_limited":
            real = link.real_jid(nick)
            sender = Jid.parse(real).bare.lower() if real else nick
            now = time.monotonic()
            last, quiet = self._told.get(sender, (-NOTICE_EVERY, 0))
            if now - last < NOTICE_EVERY:
                self._told[sender] = (last, quiet + 1)
                refused("xmpp", "resource-constraint")
                return
            if len(self._told) >= MAX_TOLD:
                self._told = {k: v for k, v in self._told.items() if now - v[0] < NOTICE_EVERY}
            self._told[sender] = (now, 0)
            if quiet:
                exc = RateLimited(f"{exc.detail} ({quiet} more not bridged since the last notice)",
                                  retry_after=getattr(exc, "retry_after", 0.0))
        logger.info("xmpp: refused a message of %s in %s: %s %s", nick, link.slug, exc.code, exc.detail)
        await self._refuse(link, nick, event, exc)

    async def _refuse(self, link: RoomLink, nick: str, event: XmppMessageEvent, exc: BridgeError) -> None:
        # RFC 6120 would allow policy-violation for size, but slixmpp (and older clients) only
        # know the RFC 3920 set: not-acceptable, with the reason in the text.
        condition = "resource-constraint" if exc.code == "rate_limited" else "not-acceptable"
        text = f"Not bridged ({exc.code}): {exc.detail}"
        real = link.real_jid(nick)
        if real:
            await self.edge.send_error(
                sender=self.edge.component, to=real, id=event["id"], condition=condition,
                error_type="wait" if exc.code == "rate_limited" else "modify", text=text,
            )
        else:
            # An anonymous room hides the sender: a private message through the room instead.
            refused("xmpp", condition)
            await self.edge.send_message(
                sender=link.relay_jid, to=occupant_jid(link.slug, nick, muc_service=self.edge.muc),
                body=text, message_type="chat",
            )

    async def _to_puppet(self, link: RoomLink, event: XmppMessageEvent, batch: _Batch) -> None:
        if event["message_type"] == "error":
            await self._confirm(batch)
            await self.edge.pump.bounced(link, event)
        elif event["message_type"] in ("chat", "normal") and event["body"]:
            await self.edge.send_error(
                sender=event["to"], to=event["sender"], id=event["id"],
                condition="feature-not-implemented", error_type="cancel",
                text="Private messages to bridged users are not relayed: talk in the room.",
            )

    async def _direct(self, event: XmppMessageEvent) -> None:
        """A direct message to the bridge's own address: `help`, or the room list."""
        if event["message_type"] not in ("chat", "normal") or not event["body"].strip():
            return
        command, _, argument = event["body"].strip().partition(" ")
        if command.lower() == "link" and argument.strip():
            await self._link(event, argument)
            return
        rooms = await database_sync_to_async(store.bridged_rooms)()
        lines = [f"  {room_jid(room.slug, muc_service=self.edge.muc)}  {room.title}"
                 for room in rooms if not room.private]
        body = "\n".join([
            "This is the chat bridge: each room below is a group chat shared with the web and",
            "MQTT devices, where everyone appears under their own name. Join one with your client.",
            "Rooms:",
            *(lines or ["  (none yet)"]),
            "Send 'help' for this text; 'link <code>' with the code from your page on the",
            "bridge's website to have your messages appear as your own user there.",
        ])
        await self.edge.send_message(sender=self.edge.component, to=event["sender"], body=body,
                                     message_type="chat")

    async def _link(self, event: XmppMessageEvent, token: str) -> None:
        """`link <code>`: the server vouches for the sender's JID, the code for the user."""
        jid = Jid.parse(event["sender"]).bare
        try:
            user = await database_sync_to_async(link_by_token)(token=token, jid=jid)
        except (LinkRefused, ValueError) as exc:
            logger.info("xmpp: refused to link %s: %s", jid, exc)
            body = f"Not linked: {exc}"
        else:
            logger.info("xmpp: linked %s to the user %s", jid, user.get_username())
            body = (f"Linked: what {jid} says in the bridged rooms is now {user.get_username()}'s. "
                    "Unlink it on your page on the bridge's website.")
        await self.edge.send_message(sender=self.edge.component, to=event["sender"], body=body,
                                     message_type="chat")
