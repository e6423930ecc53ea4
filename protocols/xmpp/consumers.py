"""The bridge's XMPP application: rooms as multi-user chats, every bridged sender a puppet.

Outbound, the database is the source of truth: a `room.message` only wakes the
room's pump, which sends what is stored after the `xmpp` edge cursor, in
order, from each sender's puppet. The cursor moves when the room echoes a
message back to the relay (the room has it, and archived it), so a drop of
the stream resends exactly what was not confirmed; after a rejoin, the
room's replayed history tells which of those arrived anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from bridge.envelope import Envelope, Sender
from bridge.exceptions import BridgeError
from bridge.names import ROOMS_GROUP, room_group
from bridge.services.messages import amessage_post
from protocols.xmpp import store
from protocols.xmpp.addresses import Jid, occupant_jid, room_jid
from protocols.xmpp.consumer import XmppConsumer
from protocols.xmpp.events import XmppMessageEvent, XmppPresenceEvent
from protocols.xmpp.limits import RateLimiter
from protocols.xmpp.rooms import REJOIN_HISTORY, InFlight, Puppet, RoomLink, sender_key

logger = logging.getLogger(__name__)

ID_PREFIX = "bridge-"
PUPPET_KINDS = ("user", "device")
# A message the room refuses this often is skipped (with a log line) so the room is not stuck.
MAX_FAILURES = 3


class BridgeXmppConsumer(XmppConsumer):
    rooms: dict[str, RoomLink]
    limiter: RateLimiter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.rooms = {}
        self.connected = False
        self.hears_rooms = False
        self.limiter = RateLimiter(rate=settings.XMPP_RATE, burst=settings.XMPP_BURST)
        await super().__call__(scope, receive, send)

    @property
    def component(self) -> str:
        return self.scope["component"]

    @property
    def muc(self) -> str:
        return self.scope["muc_service"]

    # --- the stream -------------------------------------------------------------

    async def connect(self) -> None:
        """Accepted (again): join every public room with the relay; puppets follow when ready."""
        self.connected = True
        if not self.hears_rooms:
            self.hears_rooms = True
            await self.channel_layer.group_add(ROOMS_GROUP, self.channel_name)
            self._schedule_resync()
        for slug, pk, _ in await database_sync_to_async(store.bridged_rooms)():
            await self._join_room(slug, pk)
        logger.info("xmpp: joining %d rooms on %s", len(self.rooms), self.muc)

    async def _join_room(self, slug: str, pk: int) -> None:
        link = self.rooms.get(slug)
        if link is None:
            link = self.rooms[slug] = RoomLink(
                slug=slug,
                room_pk=pk,
                room_jid=room_jid(slug, muc_service=self.muc),
                relay_jid=f"{self.component}/{settings.XMPP_BRIDGE_NICK}",
                relay_nick=settings.XMPP_BRIDGE_NICK,
                component=self.component,
            )
            await self.channel_layer.group_add(room_group(slug), self.channel_name)
        link.reset()
        link.cursor_seq = link.sent_upto = await database_sync_to_async(store.cursor_seq)(
            room_pk=pk
        )
        await self.send_join(
            sender=link.relay_jid,
            to=occupant_jid(slug, link.relay_nick, muc_service=self.muc),
            history=REJOIN_HISTORY,
        )

    # --- rooms created while connected ---------------------------------------------

    async def rooms_changed(self, event: dict[str, Any]) -> None:
        """A room was created or changed (`bridge.services.rooms.rooms_changed`)."""
        await self._join_new_rooms()

    async def rooms_resync(self, event: dict[str, Any]) -> None:
        """The periodic catch-up for an announcement that was lost or made elsewhere."""
        self._schedule_resync()
        await self._join_new_rooms()
        if self.connected:
            await database_sync_to_async(store.occupants_renew)(ttl=self._occupant_ttl())

    async def _join_new_rooms(self) -> None:
        """Join rooms that became bridgeable; leave rooms that no longer are (made private)."""
        bridged = {slug: pk for slug, pk, _ in await database_sync_to_async(store.bridged_rooms)()}
        for slug in [s for s in self.rooms if s not in bridged]:
            await self._leave_room(slug)
        if not self.connected:
            return  # the next connect joins every room anyway
        for slug, pk in bridged.items():
            if slug not in self.rooms:
                logger.info("xmpp: bridging the new room %s", slug)
                await self._join_room(slug, pk)

    async def _leave_room(self, slug: str) -> None:
        """Stop bridging a room: nothing more is relayed either way, and our occupants leave."""
        link = self.rooms.pop(slug)
        await self.channel_layer.group_discard(room_group(slug), self.channel_name)
        logger.info("xmpp: %s is no longer bridged (private now); leaving it", link.room_jid)
        if not self.connected:
            return
        for puppet in link.puppets.values():
            if puppet.joined or puppet.joining:
                await self.send_leave(
                    sender=puppet.jid, to=occupant_jid(slug, puppet.nick, muc_service=self.muc)
                )
        for nick in list(link.occupants):
            if not link.is_ours(nick):
                await self._occupant_left(link, nick)
        await self.send_leave(
            sender=link.relay_jid, to=occupant_jid(slug, link.relay_nick, muc_service=self.muc)
        )

    def _schedule_resync(self) -> None:
        layer, channel = self.channel_layer, self.channel_name
        asyncio.get_running_loop().call_later(
            settings.XMPP_ROOM_SYNC_INTERVAL,
            lambda: asyncio.ensure_future(layer.send(channel, {"type": "rooms.resync"})),
        )

    async def disconnect(self, reason: str) -> None:
        self.connected = False
        for link in self.rooms.values():
            # The server is gone, and with it everyone's seat in its rooms.
            for nick in list(link.occupants):
                if not link.is_ours(nick):
                    await self._occupant_left(link, nick)
            link.reset()

    # --- from the room groups -----------------------------------------------------

    async def room_message(self, event: dict[str, Any]) -> None:
        link = self.rooms.get(event["message"]["room"])
        if link is not None:
            await self._pump(link)

    async def room_presence(self, event: dict[str, Any]) -> None:
        """Someone came or went. Group events do not say which room, and the `Presence`
        table is the truth anyway: read it again for the rooms this may concern."""
        who: Sender = event["who"]
        if who["kind"] not in PUPPET_KINDS:
            return
        slug = event.get("room")
        links = [self.rooms[slug]] if slug in self.rooms else list(self.rooms.values())
        for link in links:
            if link.ready:
                await self._sync_presence(link)

    async def _sync_presence(self, link: RoomLink) -> None:
        present = await database_sync_to_async(store.present_senders)(room_pk=link.room_pk)
        online = {sender_key(who) for who in present if who["kind"] in PUPPET_KINDS}
        for who in present:
            if sender_key(who) in online:
                link.puppet(who)
        for key, puppet in list(link.puppets.items()):
            puppet.online = key in online
            if puppet.online and not (puppet.joined or puppet.joining):
                await self._join_puppet(link, puppet)
            elif not puppet.online:
                await self._leave_if_idle(link, puppet)

    # --- presence from the rooms ---------------------------------------------------

    async def receive_presence(self, event: XmppPresenceEvent) -> None:
        sender = Jid.parse(event["sender"])
        link = self.rooms.get(sender.local) if sender.domain == self.muc.lower() else None
        if link is None or not sender.resource:
            return
        nick = sender.resource
        if event["to"] == link.relay_jid:
            await self._relay_presence(link, nick, event)
            return
        puppet = link.puppet_by_jid(event["to"])
        if puppet is not None:
            await self._puppet_presence(link, puppet, event)

    async def _relay_presence(self, link: RoomLink, nick: str, event: XmppPresenceEvent) -> None:
        if event["presence_type"] == "error":
            logger.error("xmpp: the relay cannot join %s: %s", link.room_jid, event["error_condition"])
            return
        if 110 in event["status_codes"]:
            if event["presence_type"] == "unavailable":
                logger.warning("xmpp: the relay left %s (codes %s)", link.room_jid, event["status_codes"])
                link.reset()
            elif not link.relay_joined:
                # The room sends the history it replays after this. A presence update is
                # answered after the history: its echo says the join is complete.
                link.relay_joined = True
                await self.send(
                    {"type": "xmpp.presence", "sender": link.relay_jid,
                     "to": occupant_jid(link.slug, link.relay_nick, muc_service=self.muc),
                     "status": "bridging to the web and MQTT"}
                )
            elif not link.ready:
                link.ready = True
                logger.info("xmpp: bridging %s", link.room_jid)
                await self._on_ready(link)
            return
        if event["presence_type"] == "unavailable":
            ours = link.is_ours(nick)
            link.occupants.pop(nick, None)
            if not ours:
                await self._occupant_left(link, nick)
            if 303 in event["status_codes"] and event["nick"]:  # a nick change
                link.occupants[event["nick"]] = event["real_jid"]
                await self._occupant_joined(link, event["nick"])
        else:
            new = nick not in link.occupants
            link.occupants[nick] = event["real_jid"]
            if new:
                await self._occupant_joined(link, nick)

    async def _occupant_joined(self, link: RoomLink, nick: str) -> None:
        """An XMPP user is in the room: web users see them in the room's presence."""
        if link.is_ours(nick):
            return
        who = await database_sync_to_async(store.occupant_online)(
            room_pk=link.room_pk, nick=nick, real_jid=link.real_jid(nick), ttl=self._occupant_ttl()
        )
        if who is not None:
            await self._announce(link, who, "online")

    async def _occupant_left(self, link: RoomLink, nick: str) -> None:
        who = await database_sync_to_async(store.occupant_offline)(room_pk=link.room_pk, nick=nick)
        if who is not None:
            await self._announce(link, who, "offline")

    async def _announce(self, link: RoomLink, who: Sender, state: str) -> None:
        await self.channel_layer.group_send(
            room_group(link.slug),
            {"type": "room.presence", "who": who, "state": state, "origin": "xmpp", "room": link.slug},
        )

    def _occupant_ttl(self) -> timedelta:
        # Renewed at every resync: if runxmpp dies, the workers' reconciler expires them.
        return timedelta(seconds=3 * settings.XMPP_ROOM_SYNC_INTERVAL)

    async def _puppet_presence(self, link: RoomLink, puppet: Puppet, event: XmppPresenceEvent) -> None:
        if event["presence_type"] == "error":
            puppet.joining = False
            if event["error_condition"] == "conflict" and puppet.attempt < 5:
                puppet.attempt += 1
                logger.info("xmpp: nick taken in %s, %s tries %r", link.slug, puppet.jid, puppet.nick)
                await self._join_puppet(link, puppet)
            else:
                logger.error("xmpp: %s cannot join %s: %s", puppet.jid, link.room_jid,
                             event["error_condition"])
            return
        if 110 not in event["status_codes"]:
            return
        if event["presence_type"] == "unavailable":
            puppet.joined = puppet.joining = False
            if link.busy(sender_key(puppet.sender)):
                # Kicked with messages in flight: send them again.
                self._rewind(link)
                await self._pump(link)
            return
        puppet.joined, puppet.joining = True, False
        await self._pump(link)

    # --- messages from the rooms and to the component -------------------------------

    async def receive_message(self, event: XmppMessageEvent) -> None:
        sender = Jid.parse(event["sender"])
        to = Jid.parse(event["to"])
        link = self.rooms.get(sender.local) if sender.domain == self.muc.lower() else None
        if link is not None and event["to"] == link.relay_jid:
            await self._room_message(link, sender.resource, event)
        elif link is not None and link.puppet_by_jid(event["to"]) is not None:
            await self._to_puppet(link, event)
        elif event["message_type"] == "error":
            return  # never answer an error: that is how loops start
        elif to.domain == self.component.lower() and not to.local:
            await self._direct(event)
        else:
            logger.info("xmpp: refused a message from %s to unknown address %s",
                        event["sender"], event["to"])
            await self.send_error(
                sender=event["to"], to=event["sender"], id=event["id"],
                condition="item-not-found", error_type="cancel",
                text=f"No such room or user here. Rooms are on {self.muc}; send 'help' to {self.component}.",
            )

    async def _room_message(self, link: RoomLink, nick: str, event: XmppMessageEvent) -> None:
        if event["message_type"] == "error":
            logger.warning("xmpp: %s refused a message of the relay: %s", link.room_jid,
                           event["error_condition"])
            return
        if event["message_type"] != "groupchat":
            return
        if event["subject"] is not None and not event["body"]:
            return  # a subject change (or the subject sent on join)
        ours = event["origin_id"] if event["origin_id"].startswith(ID_PREFIX) else event["id"]
        if event["delayed"]:
            if ours.startswith(ID_PREFIX) and link.is_ours(nick):
                link.in_room.add(ours)
            return  # the history a room replays on join is never stored again
        if link.is_ours(nick):
            if ours.startswith(ID_PREFIX):
                to_seq = link.ack(ours)
                if to_seq is not None:
                    await self._advance(link, to_seq)
                await self._pump(link)
            return
        if not nick or not event["body"]:
            return
        await self._from_occupant(link, nick, event)

    async def _from_occupant(self, link: RoomLink, nick: str, event: XmppMessageEvent) -> None:
        """An XMPP occupant spoke: store it once, under its nick; refusals go back to it."""
        occupant = occupant_jid(link.slug, nick, muc_service=self.muc)
        try:
            if not self.limiter.allow(occupant):
                raise BridgeError("Too many messages: slow down.", code="rate_limited")
            identity = await database_sync_to_async(store.occupant_identity)(
                nick=nick, real_jid=link.real_jid(nick)
            )
            await amessage_post(
                room=link.slug,
                sender=identity,
                origin="xmpp",
                text=event["body"],
                client_key=event["origin_id"] or event["stanza_id"] or None,
            )
        except BridgeError as exc:
            logger.info("xmpp: refused a message of %s in %s: %s %s", nick, link.slug, exc.code,
                        exc.detail)
            await self._refuse(link, nick, event, exc)

    async def _refuse(self, link: RoomLink, nick: str, event: XmppMessageEvent, exc: BridgeError) -> None:
        # RFC 6120 would allow policy-violation for size, but slixmpp (and older clients) only
        # know the RFC 3920 set: not-acceptable, with the reason in the text.
        condition = "resource-constraint" if exc.code == "rate_limited" else "not-acceptable"
        text = f"Not bridged ({exc.code}): {exc.detail}"
        real = link.real_jid(nick)
        if real:
            await self.send_error(
                sender=self.component, to=real, id=event["id"], condition=condition,
                error_type="wait" if exc.code == "rate_limited" else "modify", text=text,
            )
        else:
            # An anonymous room hides the sender: a private message through the room instead.
            await self.send_message(
                sender=link.relay_jid, to=occupant_jid(link.slug, nick, muc_service=self.muc),
                body=text, message_type="chat",
            )

    async def _to_puppet(self, link: RoomLink, event: XmppMessageEvent) -> None:
        if event["message_type"] == "error":
            await self._delivery_failed(link, event)
        elif event["message_type"] in ("chat", "normal") and event["body"]:
            await self.send_error(
                sender=event["to"], to=event["sender"], id=event["id"],
                condition="feature-not-implemented", error_type="cancel",
                text="Private messages to bridged users are not relayed: talk in the room.",
            )

    async def _direct(self, event: XmppMessageEvent) -> None:
        """A direct message to the bridge's own address: `help`, or the room list."""
        if event["message_type"] not in ("chat", "normal") or not event["body"].strip():
            return
        rooms = await database_sync_to_async(store.bridged_rooms)()
        lines = [f"  {room_jid(slug, muc_service=self.muc)}  {title}" for slug, _, title in rooms]
        body = "\n".join([
            "This is the chat bridge: each room below is a group chat shared with the web and",
            "MQTT devices, where everyone appears under their own name. Join one with your client.",
            "Rooms:",
            *(lines or ["  (none yet)"]),
            "Send 'help' for this text.",
        ])
        await self.send_message(sender=self.component, to=event["sender"], body=body,
                                message_type="chat")

    # --- outbound: the pump -----------------------------------------------------------

    async def _on_ready(self, link: RoomLink) -> None:
        await self._sync_presence(link)
        await self._pump(link)

    async def _pump(self, link: RoomLink) -> None:
        """Send what is stored after what was sent, in order, while the window has room."""
        while self.connected and link.ready and link.window_left() > 0:
            pending = await database_sync_to_async(store.messages_after)(
                room_pk=link.room_pk, slug=link.slug, after=link.sent_upto, limit=link.window_left()
            )
            if not pending:
                break
            for envelope in pending:
                sent = await self._send_one(link, envelope)
                if not sent:
                    return  # waiting for a puppet to join; its self-presence pumps again
        if not link.inflight:
            for puppet in list(link.puppets.values()):
                if not puppet.online:
                    await self._leave_if_idle(link, puppet)

    async def _send_one(self, link: RoomLink, envelope: Envelope) -> bool:
        message_id = f"{ID_PREFIX}{envelope['id']}"
        if envelope["origin"] == "xmpp" or message_id in link.in_room:
            to_seq = link.skip(envelope["seq"])
            if to_seq is not None:
                await self._advance(link, to_seq)
            return True
        if envelope["sender"]["kind"] == "system":
            sender_jid, key = link.relay_jid, None
        else:
            puppet = link.puppet(envelope["sender"])
            if not puppet.joined:
                if not puppet.joining:
                    await self._join_puppet(link, puppet)
                return False
            sender_jid, key = puppet.jid, sender_key(puppet.sender)
        await self.send_message(
            sender=sender_jid, to=link.room_jid, body=_body(envelope), id=message_id
        )
        link.inflight.append(InFlight(seq=envelope["seq"], message_id=message_id, puppet=key))
        link.sent_upto = envelope["seq"]
        return True

    async def _delivery_failed(self, link: RoomLink, event: XmppMessageEvent) -> None:
        ours = event["origin_id"] or event["id"]
        entry = next((e for e in link.inflight if e.message_id == ours), None)
        if entry is None:
            return
        count = link.failures[entry.seq] = link.failures.get(entry.seq, 0) + 1
        logger.warning("xmpp: %s refused seq %s of %s (%s, attempt %d)", link.room_jid, entry.seq,
                       link.slug, event["error_condition"], count)
        if count >= MAX_FAILURES:
            logger.error("xmpp: giving up on seq %s of %s", entry.seq, link.slug)
            to_seq = link.ack(ours)
            if to_seq is not None:
                await self._advance(link, to_seq)
        else:
            if entry.puppet is not None and entry.puppet in link.puppets:
                link.puppets[entry.puppet].joined = False  # most refusals: not an occupant (any more)
            self._rewind(link)
        await self._pump(link)

    def _rewind(self, link: RoomLink) -> None:
        link.inflight.clear()
        link.sent_upto = link.cursor_seq

    async def _advance(self, link: RoomLink, to_seq: int) -> None:
        link.cursor_seq = await database_sync_to_async(store.cursor_advance)(
            room_pk=link.room_pk, to_seq=to_seq
        )
        link.failures = {seq: n for seq, n in link.failures.items() if seq > link.cursor_seq}

    async def _join_puppet(self, link: RoomLink, puppet: Puppet) -> None:
        if not self.connected:
            return
        puppet.joining = True
        await self.send_join(
            sender=puppet.jid, to=occupant_jid(link.slug, puppet.nick, muc_service=self.muc)
        )

    async def _leave_if_idle(self, link: RoomLink, puppet: Puppet) -> None:
        if puppet.online or not (puppet.joined or puppet.joining) or link.inflight:
            return
        puppet.joined = puppet.joining = False
        await self.send_leave(
            sender=puppet.jid, to=occupant_jid(link.slug, puppet.nick, muc_service=self.muc)
        )


def _body(envelope: Envelope) -> str:
    if envelope["text"]:
        return envelope["text"]
    # A data-only message (telemetry, alerts): XMPP clients see it as JSON.
    return json.dumps(envelope["data"], sort_keys=True)
