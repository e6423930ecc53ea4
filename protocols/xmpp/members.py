"""A private room's member list in step with Django: members-only MUC affiliations.

A private room is a members-only room (the owner form says so): the server
lets in only JIDs with an affiliation, and answers anyone else's join with
`registration-required`. The bridge, the room's owner, keeps the `member`
affiliations equal to `bridge.access.room_member_jids` (JID members, and the
linked accounts of member users): it reads the room's member list
(`muc#admin`), adds who is missing and sets removed members to `none` (the
server then removes them from the room). Its own puppets get `member` just
before they join. It runs after each configuration, on every `rooms.changed`
(memberships announce one) and at every periodic resync.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from protocols.xmpp import store
from protocols.xmpp.addresses import Jid
from protocols.xmpp.events import AffiliationItem, XmppIqEvent
from protocols.xmpp.link import Puppet, RoomLink

if TYPE_CHECKING:
    from protocols.xmpp.consumers import BridgeXmppConsumer

logger = logging.getLogger(__name__)

_iq_ids = itertools.count(1)


class Members:
    """The affiliation part of the bridge's XMPP consumer."""

    def __init__(self, edge: BridgeXmppConsumer) -> None:
        self.edge = edge

    async def sync(self, link: RoomLink) -> None:
        """Ask the room for its members; `iq_answer` brings them in step."""
        if not link.private or link.affiliation != "owner" or link.members_iq:
            return
        link.members_iq = f"bridge-members-{next(_iq_ids)}"
        await self.edge.send({"type": "xmpp.iq", "sender": link.relay_jid, "to": link.room_jid,
                              "id": link.members_iq, "iq_type": "get", "query": "admin",
                              "items": [{"jid": "", "affiliation": "member"}]})

    async def iq_answer(self, link: RoomLink, event: XmppIqEvent) -> None:
        if event["id"] != link.members_iq:
            if event["iq_type"] == "error":
                logger.warning("xmpp: %s refused an affiliation change (%s)", link.room_jid,
                               event["error_condition"])
            return
        link.members_iq = ""
        if event["iq_type"] == "error":
            logger.error("xmpp: %s will not list its members (%s): membership not kept in step",
                         link.room_jid, event["error_condition"])
            return
        wanted = await database_sync_to_async(store.member_jids)(room_pk=link.room_pk)
        current = {Jid.parse(item["jid"]).bare.lower() for item in event["items"] if item["jid"]}
        ours = self.edge.component.lower()
        changes: list[AffiliationItem] = [
            {"jid": jid, "affiliation": "member"} for jid in sorted(wanted - current)
        ] + [
            # Our puppets keep their seats; they are members of every private room they speak in.
            {"jid": jid, "affiliation": "none"} for jid in sorted(current - wanted)
            if Jid.parse(jid).domain != ours
        ]
        link.affiliated = {jid for jid in current if Jid.parse(jid).domain == ours}
        if changes:
            logger.info("xmpp: %s members: +%d -%d", link.room_jid,
                        sum(c["affiliation"] == "member" for c in changes),
                        sum(c["affiliation"] == "none" for c in changes))
            await self._set(link, changes)

    async def admit_puppet(self, link: RoomLink, puppet: Puppet) -> None:
        """Before a puppet joins a members-only room: make it a member (once per session)."""
        bare = Jid.parse(puppet.jid).bare.lower()
        if not link.private or link.affiliation != "owner" or bare in link.affiliated:
            return
        link.affiliated.add(bare)
        # The server handles the room's stanzas in order: the join that follows finds it a member.
        await self._set(link, [{"jid": bare, "affiliation": "member"}])

    async def _set(self, link: RoomLink, items: list[AffiliationItem]) -> None:
        await self.edge.send({"type": "xmpp.iq", "sender": link.relay_jid, "to": link.room_jid,
                              "id": f"bridge-affiliations-{next(_iq_ids)}", "iq_type": "set",
                              "query": "admin", "items": items})
