"""Who is in a bridged room: XMPP occupants in (presence for the web), puppets out.

XMPP occupants seen by the relay are recorded in the room's presence, so the
web shows them. Each web user and device that is online (or still has to
speak) is a puppet occupant under its own name. A puppet the room refuses is
retried with back-off and logged once per streak; meanwhile its messages go
through the relay (see `outbound`), so a refused puppet never holds the room.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from bridge.envelope import Sender
from bridge.names import room_group
from protocols.xmpp import store
from protocols.xmpp.addresses import MAX_NICK_ATTEMPTS, occupant_jid
from protocols.xmpp.events import XmppPresenceEvent
from protocols.xmpp.link import Puppet, PuppetState, RoomLink, sender_key

if TYPE_CHECKING:
    from protocols.xmpp.consumers import BridgeXmppConsumer

logger = logging.getLogger(__name__)

PUPPET_KINDS = ("user", "device")


class Occupants:
    """The presence part of the bridge's XMPP consumer."""

    def __init__(self, edge: BridgeXmppConsumer) -> None:
        self.edge = edge

    def ttl(self) -> timedelta:
        # Renewed at every resync: if runxmpp dies, the workers' reconciler expires them.
        return timedelta(seconds=3 * self.edge.config.room_sync_interval)

    # --- XMPP occupants in ------------------------------------------------------------

    async def seen(self, link: RoomLink, nick: str, event: XmppPresenceEvent) -> None:
        """A presence of someone else in the room, as the relay sees it."""
        if event["presence_type"] == "error":
            return
        if event["presence_type"] == "unavailable":
            ours = link.is_ours(nick)
            link.occupants.pop(nick, None)
            if not ours:
                await self._left(link, nick)
            if 303 in event["status_codes"] and event["nick"]:  # a nick change
                link.occupants[event["nick"]] = event["real_jid"]
                await self._joined(link, event["nick"])
            await self.edge.moderation.seen(link, nick, event, new=False)
            return
        new = nick not in link.occupants
        link.occupants[nick] = event["real_jid"]
        await self.edge.moderation.seen(link, nick, event, new=new)
        if new:
            await self._joined(link, nick)

    async def _joined(self, link: RoomLink, nick: str) -> None:
        """An XMPP user is in the room: web users see them in the room's presence."""
        if link.is_ours(nick):
            return
        who = await database_sync_to_async(store.occupant_online)(
            room_pk=link.room_pk, nick=nick, real_jid=link.real_jid(nick), ttl=self.ttl()
        )
        if who is not None:
            await self._announce(link, who, "online")

    async def _left(self, link: RoomLink, nick: str) -> None:
        who = await database_sync_to_async(store.occupant_offline)(room_pk=link.room_pk, nick=nick)
        if who is not None:
            await self._announce(link, who, "offline")

    async def _announce(self, link: RoomLink, who: Sender, state: str) -> None:
        await self.edge.announce(
            room_group(link.slug),
            {"type": "room.presence", "who": who, "state": state, "origin": "xmpp", "room": link.slug},
        )

    async def all_gone(self, link: RoomLink) -> None:
        """The relay is out of the room: so, for the web, is every XMPP user in it."""
        for nick in list(link.occupants):
            if not link.is_ours(nick):
                await self._left(link, nick)

    async def all_leave(self, link: RoomLink) -> None:
        """The room is no longer bridged: our puppets leave it, its users leave the web's view."""
        for puppet in link.puppets.values():
            if puppet.seated:
                await self.edge.send_leave(sender=puppet.jid, to=self._seat(link, puppet))
                puppet.state = PuppetState.OUT
        await self.all_gone(link)

    async def renew(self) -> None:
        await database_sync_to_async(store.occupants_renew)(ttl=self.ttl())

    # --- puppets out ----------------------------------------------------------------------

    async def room_presence(self, event: dict[str, Any]) -> None:
        """Someone came or went. Group events do not say which room, and the `Presence`
        table is the truth anyway: read it again for the rooms this may concern."""
        who: Sender = event["who"]
        if who["kind"] not in PUPPET_KINDS:
            return
        slug = event.get("room")
        links = [self.edge.rooms[slug]] if slug in self.edge.rooms else list(self.edge.rooms.values())
        for link in links:
            if link.ready:
                await self.sync_presence(link)

    async def sync_presence(self, link: RoomLink) -> None:
        present = await database_sync_to_async(store.present_senders)(room_pk=link.room_pk)
        online = {sender_key(who) for who in present if who["kind"] in PUPPET_KINDS}
        for who in present:
            if sender_key(who) in online:
                link.puppet(who)
        for key, puppet in list(link.puppets.items()):
            puppet.online = key in online
            if puppet.online and puppet.state is PuppetState.OUT:
                await self.join_puppet(link, puppet)
            elif not puppet.online:
                await self.leave_if_idle(link, puppet)

    async def join_puppet(self, link: RoomLink, puppet: Puppet) -> None:
        if not self.edge.connected:
            return
        puppet.state = PuppetState.JOINING
        puppet.retry_at = time.monotonic() + self.edge.config.join_timeout
        await self.edge.members.admit_puppet(link, puppet)
        await self.edge.send_join(sender=puppet.jid, to=self._seat(link, puppet))

    async def leave_if_idle(self, link: RoomLink, puppet: Puppet) -> None:
        if puppet.online or not puppet.seated or link.inflight:
            return
        puppet.state = PuppetState.OUT
        await self.edge.send_leave(sender=puppet.jid, to=self._seat(link, puppet))

    async def puppet_presence(self, link: RoomLink, puppet: Puppet, event: XmppPresenceEvent) -> None:
        """The room answers a puppet's join (or throws it out)."""
        if event["presence_type"] == "error":
            if event["error_condition"] == "conflict" and puppet.attempt < MAX_NICK_ATTEMPTS:
                puppet.attempt += 1
                logger.info("xmpp: nick taken in %s, %s tries %r", link.slug, puppet.jid, puppet.nick)
                await self.join_puppet(link, puppet)
            else:
                self._failed(link, puppet, event["error_condition"] or "refused")
                await self.edge.pump.pump(link)
            return
        if 110 not in event["status_codes"]:
            return
        if event["presence_type"] == "unavailable":
            puppet.state = PuppetState.OUT
            if link.busy(sender_key(puppet.sender)):
                # Kicked with messages in flight: send them again.
                self.edge.pump.rewind(link)
                await self.edge.pump.pump(link)
            return
        if puppet.failures:
            logger.info("xmpp: %s could join %s again", puppet.jid, link.room_jid)
        puppet.state, puppet.failures = PuppetState.IN, 0
        await self.edge.pump.pump(link)

    def _failed(self, link: RoomLink, puppet: Puppet, reason: str) -> None:
        puppet.failures += 1
        puppet.state = PuppetState.FAILED
        config = self.edge.config
        delay = min(config.puppet_retry * 2 ** (puppet.failures - 1), config.puppet_retry_max)
        puppet.retry_at = time.monotonic() + delay
        if puppet.failures == 1:
            logger.warning("xmpp: %s cannot join %s (%s): its messages go through the relay; "
                           "trying again with back-off", puppet.jid, link.room_jid, reason)

    async def tick(self, link: RoomLink) -> None:
        """Joins nobody answered fail; failed puppets that are wanted try again."""
        now = time.monotonic()
        for puppet in list(link.puppets.values()):
            if puppet.state is PuppetState.JOINING and now >= puppet.retry_at:
                self._failed(link, puppet, "no answer")
                await self.edge.pump.pump(link)
            elif puppet.state is PuppetState.FAILED and now >= puppet.retry_at and (
                puppet.online or link.busy(sender_key(puppet.sender))
            ):
                puppet.attempt = 0
                await self.join_puppet(link, puppet)

    def _seat(self, link: RoomLink, puppet: Puppet) -> str:
        return occupant_jid(link.slug, puppet.nick, muc_service=self.edge.muc)
