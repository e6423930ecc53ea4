"""The bridge's XMPP application: rooms as multi-user chats, every bridged sender a puppet.

One instance per component connection; it outlives reconnects of the stream.
This module only routes: each stanza and group event goes to the part whose
job it is, `rooms` (the lifecycle of each room link), `occupants` (XMPP users
in, puppets out), `inbound` (messages in), `outbound` (the pump) and
`members` (a private room's affiliations). One lock runs them one at a time,
stanza handlers and the supervised loops alike, so the room links' state
never sees two writers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.db import InterfaceError, OperationalError
from redis.exceptions import RedisError

from bridge.health import HEALTH
from bridge.names import ROOMS_GROUP, room_group
from bridge.supervisor import Supervisor
from protocols.xmpp.addresses import Jid
from protocols.xmpp.config import EdgeConfig, edge_config
from protocols.xmpp.consumer import XmppConsumer
from protocols.xmpp.events import XmppIqEvent, XmppMessageEvent, XmppPresenceEvent
from protocols.xmpp.inbound import Inbound
from protocols.xmpp.link import RoomLink
from protocols.xmpp.members import Members
from protocols.xmpp.moderation import Moderation
from protocols.xmpp.occupants import Occupants
from protocols.xmpp.outbound import Pump
from protocols.xmpp.rooms import Rooms

logger = logging.getLogger(__name__)

# Seconds between checks of joins and echoes nobody answered (see `occupants`, `outbound`).
TICK = 1.0
# What a dependency going away raises; a handler that meets one runs again after a pause.
# Not DatabaseError as a whole: an IntegrityError or a DataError would fail forever.
TRANSIENT = (OperationalError, InterfaceError, RedisError, OSError, TimeoutError)
RETRY_MIN, RETRY_MAX = 0.5, 10.0
LAYER_CHECK = "xmpp.channel_layer"


class BridgeXmppConsumer(XmppConsumer):
    config: EdgeConfig
    rooms: dict[str, RoomLink]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.config = edge_config()
        self.rooms = {}
        self.connected = False
        self.lifecycle = Rooms(self)
        self.occupants = Occupants(self)
        self.inbound = Inbound(self)
        self.pump = Pump(self)
        self.members = Members(self)
        self.moderation = Moderation(self)
        self._turn = asyncio.Lock()
        self._loops = Supervisor("xmpp")
        self._started = False
        self._layer_down = False
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            self.channel_name = await self.channel_layer.new_channel()
            await await_many_dispatch([receive, self._layer_receive], self.dispatch)
        except StopConsumer:
            pass
        finally:
            await self._loops.stop()

    async def dispatch(self, message: Any) -> None:
        """One event at a time. A database or Redis that is away fails the handler: it runs
        again, after a back-off, until they are back (meanwhile the protocol server stops
        reading from the XMPP server once its queue is full); the process never exits."""
        delay = RETRY_MIN
        while True:
            async with self._turn:
                try:
                    await super().dispatch(message)
                    return
                except TRANSIENT as exc:
                    failure = f"{type(exc).__name__}: {exc}"
            if delay == RETRY_MIN:
                logger.warning("xmpp: %s failed (%s); trying again until it works",
                               message.get("type"), failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _layer_receive(self) -> dict[str, Any]:
        """The channel layer's next message; while its Redis is away, waits for it (reported
        to the health registry) instead of ending the consumer. Back, it may be empty: our
        groups are added again (that is also the probe), and the rooms pumped."""
        delay = RETRY_MIN
        while True:
            try:
                if self._layer_down:
                    await self._join_groups()
                    self._layer_down = False
                    HEALTH.ok(LAYER_CHECK)
                    delay = RETRY_MIN
                    await self.dispatch({"type": "layer.back"})
                message: dict[str, Any] = await self.channel_layer.receive(self.channel_name)
                return message
            except TRANSIENT as exc:
                if not self._layer_down:
                    self._layer_down = True
                    HEALTH.failing(LAYER_CHECK, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def layer_back(self, event: dict[str, Any]) -> None:
        """Redis is back: whatever was stored meanwhile (its wake-ups are lost) goes out now."""
        for link in list(self.rooms.values()):
            await self.pump.pump(link)

    async def _join_groups(self) -> None:
        await self.channel_layer.group_add(ROOMS_GROUP, self.channel_name)
        for slug in list(self.rooms):
            await self.channel_layer.group_add(room_group(slug), self.channel_name)

    async def announce(self, group: str, event: dict[str, Any]) -> None:
        """Best effort: a Redis that is away loses this event, not the stanza that caused it
        (the web reads presence from the database when it reconnects)."""
        try:
            await self.channel_layer.group_send(group, event)
        except TRANSIENT as exc:
            logger.warning("xmpp: could not tell %s (%s): %s", group, event.get("type"), exc)

    @property
    def component(self) -> str:
        return self.scope["component"]

    @property
    def muc(self) -> str:
        return self.scope["muc_service"]

    # --- the stream -------------------------------------------------------------

    async def connect(self) -> None:
        """Accepted (again): join every bridged room with the relay; puppets follow when ready."""
        self.connected = True
        if not self._started:
            self._started = True
            await self._join_groups()
            self._loops.every("rooms", self.config.room_sync_interval, self._resync,
                              first_delay=self.config.room_sync_interval)
            self._loops.every("seats", TICK, self._tick, first_delay=TICK)
        await self.lifecycle.sync()
        logger.info("xmpp: joining %d rooms on %s", len(self.rooms), self.muc)

    async def disconnect(self, reason: str) -> None:
        self.connected = False
        await self.lifecycle.dropped()

    async def _resync(self) -> None:
        """The periodic catch-up: rooms whose announcement was lost or that refused us, and
        the renewal of XMPP occupants' presence (it expires if this process dies)."""
        async with self._turn:
            await self.lifecycle.sync()
            if self.connected:
                await self.occupants.renew()
                # Insurance against a lost wake-up or a Redis that came back empty unnoticed.
                await self._join_groups()
                for link in list(self.rooms.values()):
                    await self.pump.pump(link)

    async def _tick(self) -> None:
        async with self._turn:
            for link in list(self.rooms.values()):
                if link.ready:
                    await self.occupants.tick(link)
                    await self.pump.tick(link)
                    await self.moderation.tick(link)
                else:
                    await self.lifecycle.tick(link)

    # --- from the channel layer ------------------------------------------------------

    async def rooms_changed(self, event: dict[str, Any]) -> None:
        """A room was created or changed (`bridge.services.rooms.rooms_changed`)."""
        await self.lifecycle.sync()

    async def room_message(self, event: dict[str, Any]) -> None:
        link = self.rooms.get(event["message"]["room"])
        if link is not None:
            await self.pump.pump(link)

    async def room_messages(self, event: dict[str, Any]) -> None:
        """Several messages stored at once (a batch from devices): one pump for all."""
        link = self.rooms.get(event["room"])
        if link is not None:
            await self.pump.pump(link)

    async def room_presence(self, event: dict[str, Any]) -> None:
        await self.occupants.room_presence(event)

    # --- from the XMPP server ---------------------------------------------------------

    def _link_of(self, address: str) -> RoomLink | None:
        sender = Jid.parse(address)
        return self.rooms.get(sender.local) if sender.domain == self.muc.lower() else None

    async def receive_presence(self, event: XmppPresenceEvent) -> None:
        link = self._link_of(event["sender"])
        nick = Jid.parse(event["sender"]).resource
        if link is None or not nick:
            return
        if event["to"] == link.relay_jid:
            if 110 in event["status_codes"] or (
                nick == link.relay_nick and event["presence_type"] == "error"
            ):
                await self.lifecycle.relay_presence(link, event)
            else:
                await self.occupants.seen(link, nick, event)
            return
        puppet = link.puppet_by_jid(event["to"])
        if puppet is not None:
            await self.occupants.puppet_presence(link, puppet, event)

    async def receive_message(self, event: XmppMessageEvent) -> None:
        await self.inbound.messages([event])

    async def receive_messages(self, events: list[XmppMessageEvent]) -> None:
        await self.inbound.messages(events)

    async def receive_iq(self, event: XmppIqEvent) -> None:
        link = self._link_of(event["sender"])
        if link is not None and event["to"] == link.relay_jid:
            await self.lifecycle.iq_answer(link, event)
