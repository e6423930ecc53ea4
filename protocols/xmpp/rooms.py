"""The life of a bridged room (XEP-0045): join, configure when we own it, catch up, ready, leave.

A room the bridge creates (status 201) is locked until its owner configures
it: the relay asks for the owner form (`muc#owner`), submits
`muc#roomconfig` values for what the bridge needs (persistent, public or
members-only, a name and description from the Django room, history,
archiving) on top of the server's own values, and only then goes on. A room
the relay owns already is configured again the same way, so a renamed or
privatised Django room follows. A room it does not own is bridged as far as it
allows: what is missing is said once in the log and shown in the health
report (`xmpp:room:<room>`, not critical).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from bridge.health import HEALTH
from bridge.names import room_group
from protocols.xmpp import store
from protocols.xmpp.addresses import occupant_jid, room_jid
from protocols.xmpp.events import FormField, XmppIqEvent, XmppPresenceEvent
from protocols.xmpp.link import REJOIN_HISTORY, LinkState, RoomLink

if TYPE_CHECKING:
    from protocols.xmpp.consumers import BridgeXmppConsumer

logger = logging.getLogger(__name__)

ROOMCONFIG = "muc#roomconfig_"
HISTORY_LENGTH = 50
MEMBERS_BY_DEFAULT = "members_by_default"  # ejabberd's: newcomers get voice in a moderated room
_iq_ids = itertools.count(1)


def room_config_wanted(*, title: str, private: bool) -> dict[str, list[str]]:
    """The owner-form values the bridge asks for; fields a server does not offer are skipped."""
    flag = {True: ["1"], False: ["0"]}
    return {
        f"{ROOMCONFIG}roomname": [title],
        f"{ROOMCONFIG}roomdesc": [f"{title}: shared with the web and MQTT devices by the bridge"],
        f"{ROOMCONFIG}persistentroom": flag[True],
        f"{ROOMCONFIG}publicroom": flag[not private],
        f"{ROOMCONFIG}membersonly": flag[private],
        # Everyone in may speak: bridged senders are ordinary participants (but see
        # `form_submission` for ejabberd).
        f"{ROOMCONFIG}moderatedroom": flag[False],
        # History for clients joining, and the room's archive (Prosody, then ejabberd's names).
        f"{ROOMCONFIG}historylength": [str(HISTORY_LENGTH)],
        "muc#maxhistoryfetch": [str(HISTORY_LENGTH)],
        f"{ROOMCONFIG}enablearchiving": flag[True],
        "mam": flag[True],
        f"{ROOMCONFIG}mam": flag[True],
    }


def form_submission(form: list[FormField], wanted: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """The form to submit (the server's values, ours where it offers the field) and what it lacks."""
    submitted: dict[str, list[str]] = {}
    for field in form:
        if not field["var"] or field["type"] == "fixed":
            continue
        values = wanted.get(field["var"], field["values"])
        if field["options"] and not set(values) <= set(field["options"]):
            values = field["values"]  # not a value this server allows: keep its own
        submitted[field["var"]] = values
    offered = set(submitted)
    if MEMBERS_BY_DEFAULT in offered and f"{ROOMCONFIG}moderatedroom" in offered:
        # ejabberd lets a visitor speak in an unmoderated room, so taking a flooder's voice
        # (`moderation`) needs a moderated room there; with members_by_default, everyone who
        # joins still gets voice. (Prosody offers no such field: in a moderated room there,
        # newcomers would be visitors, so its rooms stay unmoderated, where it refuses visitors.)
        submitted[MEMBERS_BY_DEFAULT] = ["1"]
        submitted[f"{ROOMCONFIG}moderatedroom"] = ["1"]
    lacks = []
    if f"{ROOMCONFIG}persistentroom" not in offered:
        lacks.append("persistence (the room may vanish when empty)")
    if not offered & {f"{ROOMCONFIG}enablearchiving", "mam", f"{ROOMCONFIG}mam"}:
        lacks.append("archiving (no MAM switch in the room's form)")
    return submitted, lacks


class Rooms:
    """The room lifecycle part of the bridge's XMPP consumer."""

    def __init__(self, edge: BridgeXmppConsumer) -> None:
        self.edge = edge

    @property
    def links(self) -> dict[str, RoomLink]:
        return self.edge.rooms

    # --- which rooms ----------------------------------------------------------------

    async def sync(self) -> None:
        """Join rooms that became bridgeable (and ones that refused or dropped us);
        leave rooms that no longer are."""
        bridged = {room.slug: room for room in await database_sync_to_async(store.bridged_rooms)()}
        for slug in [s for s, link in self.links.items() if s not in bridged and link.state is not LinkState.LEAVING]:
            await self.leave(slug)
        if not self.edge.connected:
            return  # the next connect joins every room anyway
        for slug, room in bridged.items():
            link = self.links.get(slug)
            if link is None:
                logger.info("xmpp: bridging the room %s", slug)
            elif link.state not in (LinkState.OFFLINE, LinkState.REFUSED):
                if link.state is LinkState.READY:
                    if (link.title, link.private) != (room.title, room.private):
                        link.title, link.private = room.title, room.private
                        await self._configure_again(link)  # and the members after it
                    else:
                        await self.edge.members.sync(link)
                continue
            await self.join(room)

    async def join(self, room: store.BridgedRoom) -> None:
        link = self.links.get(room.slug)
        first = link is None
        if link is None or link.state is LinkState.LEAVING:
            if link is None:
                await self.edge.channel_layer.group_add(room_group(room.slug), self.edge.channel_name)
            link = self.links[room.slug] = RoomLink(
                slug=room.slug,
                room_pk=room.pk,
                room_jid=room_jid(room.slug, muc_service=self.edge.muc),
                relay_jid=f"{self.edge.component}/{self.edge.config.nick}",
                relay_nick=self.edge.config.nick,
                component=self.edge.component,
                window=self.edge.config.window,
            )
        link.reset()
        link.title, link.private = room.title, room.private
        link.cursor_seq = link.sent_upto = await database_sync_to_async(store.cursor_seq)(
            room_pk=room.pk
        )
        if first:
            # A process restarted (perhaps with the server): what it had in flight is unknown.
            link.unsure = await database_sync_to_async(store.unconfirmed_after)(
                room_pk=room.pk, after=link.cursor_seq
            )
        link.state = LinkState.JOINING
        await self.edge.send_join(
            sender=link.relay_jid, to=self._relay_occupant(link), history=REJOIN_HISTORY
        )

    async def leave(self, slug: str) -> None:
        """Stop bridging a room: nothing more is relayed either way, and our occupants leave."""
        link = self.links[slug]
        await self.edge.channel_layer.group_discard(room_group(slug), self.edge.channel_name)
        HEALTH.forget(self._check(link))
        self.edge.moderation.forget(link)
        logger.info("xmpp: %s is no longer bridged; leaving it", link.room_jid)
        if not self.edge.connected or link.state in (LinkState.OFFLINE, LinkState.REFUSED):
            del self.links[slug]
            return
        await self.edge.occupants.all_leave(link)
        link.state = LinkState.LEAVING
        await self.edge.send_leave(sender=link.relay_jid, to=self._relay_occupant(link))

    async def dropped(self) -> None:
        """The stream is gone, and with it every seat in every room."""
        for slug, link in list(self.links.items()):
            await self.edge.occupants.all_gone(link)
            if link.state is LinkState.LEAVING:
                del self.links[slug]
            else:
                link.reset()

    # --- the relay's own presence --------------------------------------------------

    async def relay_presence(self, link: RoomLink, event: XmppPresenceEvent) -> None:
        if event["presence_type"] == "error":
            if link.state is not LinkState.REFUSED:
                logger.error("xmpp: %s refuses the relay (%s); trying again at the next resync",
                             link.room_jid, event["error_condition"])
                HEALTH.failing(self._check(link), f"refused: {event['error_condition']}",
                               critical=False)
            link.state = LinkState.REFUSED
            await database_sync_to_async(store.link_status)(
                room_pk=link.room_pk, state="refused", affiliation="",
                lacks=[f"the relay may not join ({event['error_condition']})"],
            )
            return
        if event["presence_type"] == "unavailable":
            if link.state is LinkState.LEAVING:
                del self.links[link.slug]
                return
            logger.warning("xmpp: the relay left %s (codes %s); rejoining at the next resync",
                           link.room_jid, event["status_codes"])
            await self.edge.occupants.all_gone(link)
            link.reset()
            return
        link.affiliation, link.role = event["affiliation"], event["role"]
        if link.state is LinkState.JOINING:
            if 201 in event["status_codes"] or link.affiliation == "owner":
                link.state = LinkState.CONFIGURING
                await self._ask_form(link)
            else:
                link.lacks = self._lacks_without_ownership(link)
                await self._catch_up(link)
        elif link.state is LinkState.CATCHING_UP:
            if link.unsure:
                await self._check_archive(link)
            else:
                await self._ready(link)

    def _lacks_without_ownership(self, link: RoomLink) -> list[str]:
        lacks = [f"ownership (affiliation {link.affiliation or 'none'}): the room keeps its "
                 "own configuration and members"]
        if link.role == "visitor":
            lacks.append("voice (a moderated room): bridged messages may be refused")
        return lacks

    async def _ask_form(self, link: RoomLink) -> None:
        link.pending_iq = f"bridge-config-{next(_iq_ids)}"
        await self.edge.send({"type": "xmpp.iq", "sender": link.relay_jid, "to": link.room_jid,
                              "id": link.pending_iq, "iq_type": "get", "query": "owner"})

    async def _configure_again(self, link: RoomLink) -> None:
        if link.affiliation == "owner":
            await self._ask_form(link)

    async def iq_answer(self, link: RoomLink, event: XmppIqEvent) -> None:
        if link.archive_iq and event["id"] == link.archive_iq:
            await self._archive_answer(link, event)
            return
        if event["id"] != link.pending_iq:
            if not await self.edge.moderation.iq_answer(link, event):
                await self.edge.members.iq_answer(link, event)
            return
        link.pending_iq = ""
        if event["iq_type"] == "error":
            logger.error("xmpp: %s refused its configuration (%s); bridging with what it has",
                         link.room_jid, event["error_condition"])
            link.lacks = [f"configuration ({event['error_condition']})"]
        elif event["form"]:
            wanted = room_config_wanted(title=link.title or link.slug, private=link.private)
            submitted, link.lacks = form_submission(event["form"], wanted)
            link.pending_iq = f"bridge-config-{next(_iq_ids)}"
            await self.edge.send({"type": "xmpp.iq", "sender": link.relay_jid, "to": link.room_jid,
                                  "id": link.pending_iq, "iq_type": "set", "query": "owner",
                                  "form": submitted})
            return
        else:
            logger.info("xmpp: configured %s", link.room_jid)
            await self.edge.members.sync(link)
        if link.state is LinkState.CONFIGURING:
            await self._catch_up(link)

    # --- from joined to ready --------------------------------------------------------

    async def _catch_up(self, link: RoomLink) -> None:
        """The room sends the history it replays after our self-presence. A presence update is
        answered after that history: its echo says the join is complete."""
        link.state = LinkState.CATCHING_UP
        await self.edge.send({"type": "xmpp.presence", "sender": link.relay_jid,
                              "to": self._relay_occupant(link),
                              "status": "bridging to the web and MQTT"})

    async def _check_archive(self, link: RoomLink) -> None:
        """What was sent may be unconfirmed (`link.unsure`), and a restarted server may replay
        no history: the room's archive says which of it the room has (`link.in_room`), so
        none is said twice. Its last REJOIN_HISTORY messages: more than the window."""
        link.state = LinkState.CHECKING
        link.archive_iq = f"bridge-archive-{next(_iq_ids)}"
        link.checking_since = time.monotonic()
        await self.edge.send({"type": "xmpp.iq", "sender": link.relay_jid, "to": link.room_jid,
                              "id": link.archive_iq, "iq_type": "set", "query": "archive",
                              "max": REJOIN_HISTORY})

    async def _archive_answer(self, link: RoomLink, event: XmppIqEvent) -> None:
        if event["iq_type"] == "error":
            logger.warning("xmpp: %s refused the archive query (%s): what it replayed on join "
                           "decides what is sent again", link.room_jid, event["error_condition"])
        else:
            logger.info("xmpp: %s: %d ids of ours seen in its history and archive; those said by "
                        "our nicks are not sent again", link.room_jid, len(link.in_room))
        await self._checked(link)

    async def tick(self, link: RoomLink) -> None:
        """An archive query the room never answers holds the room no longer than an echo."""
        if (link.state is LinkState.CHECKING
                and time.monotonic() - link.checking_since > self.edge.config.echo_timeout):
            logger.warning("xmpp: %s did not answer the archive query in %.0f s; going on",
                           link.room_jid, self.edge.config.echo_timeout)
            await self._checked(link)

    async def _checked(self, link: RoomLink) -> None:
        link.archive_iq, link.unsure = "", False
        await self._ready(link)

    async def _ready(self, link: RoomLink) -> None:
        link.state = LinkState.READY
        logger.info("xmpp: bridging %s", link.room_jid)
        if link.lacks:
            logger.warning("xmpp: %s does not give the bridge: %s", link.room_jid,
                           "; ".join(link.lacks))
            HEALTH.failing(self._check(link), "lacks " + "; ".join(link.lacks), critical=False)
        else:
            HEALTH.ok(self._check(link), critical=False)
        await database_sync_to_async(store.link_status)(
            room_pk=link.room_pk, state="ready", affiliation=link.affiliation, lacks=link.lacks
        )
        await self.edge.occupants.sync_presence(link)
        await self.edge.pump.pump(link)

    def _relay_occupant(self, link: RoomLink) -> str:
        return occupant_jid(link.slug, link.relay_nick, muc_service=self.edge.muc)

    @staticmethod
    def _check(link: RoomLink) -> str:
        return f"xmpp:room:{link.slug}"
