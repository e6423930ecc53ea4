"""Flood control in the room itself: an occupant that keeps flooding loses its voice for a while.

The bridge's own limit (`XMPP_RATE`, `XMPP_BURST`, per real JID) keeps a flood
out of Django, but the XMPP server still broadcasts and archives every message
the flooder sends, on its one thread: in the fault suite that delayed every
other occupant by hundreds of milliseconds. So when an occupant is refused
`MUTE_AFTER` times in a row, the relay, a moderator of the room it owns, takes
its voice (XEP-0045 §8.4: role `visitor`, with a reason): the server then
refuses its messages itself (`forbidden`), unbroadcast and unarchived. Its
voice is given back after `XMPP_FLOOD_MUTE` seconds (0 turns this off).

Never muted: our relay and puppets (the room shows them as ours), owners,
admins and moderators (as their presence shows them: an owner relay could
silence an admin on Prosody, which is not ours to do), and anyone the server
will not let us silence (it answers `not-allowed`: logged, and that sender is
left alone, never "given back" a role it did not lose). An occupant that leaves
and comes back while muted has its voice again on Prosody (roles last one
visit there; ejabberd keeps the role it was given): it is muted again at once.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocols.xmpp.events import RoleItem, XmppIqEvent, XmppPresenceEvent
from protocols.xmpp.link import RoomLink

if TYPE_CHECKING:
    from protocols.xmpp.consumers import BridgeXmppConsumer

logger = logging.getLogger(__name__)

IQ_PREFIX = "bridge-voice-"
# Refusals in a row (no message of theirs admitted in between) that make a sender a flooder:
# a person who sends a burst by hand gets the throttle's error, not a mute.
MUTE_AFTER = 5
# Senders tracked per room (refused recently or muted); past it, the oldest are forgotten.
MAX_TRACKED = 1000
PRIVILEGED_AFFILIATIONS = frozenset({"owner", "admin"})
_iq_ids = itertools.count(1)


@dataclass
class _Sender:
    nick: str
    refusals: int = 0
    muted_until: float = 0.0  # monotonic; 0: not muted
    mute_iq: str = ""  # the mute IQ sent, until the room answers it


class Moderation:
    """The voice part of the bridge's XMPP consumer."""

    def __init__(self, edge: BridgeXmppConsumer) -> None:
        self.edge = edge
        # Per room: the sender's key (its real bare JID, or its occupant JID) -> state.
        self._senders: dict[str, dict[str, _Sender]] = {}
        # Per room: the nicks the room shows as owner, admin or moderator (never muted).
        self._privileged: dict[str, set[str]] = {}
        self._told_cannot: set[str] = set()

    async def seen(self, link: RoomLink, nick: str, event: XmppPresenceEvent, *, new: bool) -> None:
        """An occupant's presence (after `occupants` recorded it): who is privileged, and a
        muted occupant back with its voice (it left and rejoined) is muted again."""
        privileged = self._privileged.setdefault(link.slug, set())
        if event["presence_type"] == "unavailable":
            privileged.discard(nick)
            return
        if event["affiliation"] in PRIVILEGED_AFFILIATIONS or event["role"] == "moderator":
            if len(privileged) < MAX_TRACKED:
                privileged.add(nick)
        else:
            privileged.discard(nick)
        sender = self._senders.get(link.slug, {}).get(link.sender_id(nick))
        if (new and sender is not None and sender.muted_until and event["role"] != "visitor"
                and time.monotonic() < sender.muted_until and nick not in privileged):
            logger.warning("xmpp: %s rejoined %s while muted: its voice is taken again", nick, link.room_jid)
            sender.nick = nick
            await self._mute(link, sender, "Flooding: rejoined while muted.")

    def admitted(self, link: RoomLink, key: str) -> None:
        """A message of `key` got through the bridge's limit: its streak of refusals ends."""
        sender = self._senders.get(link.slug, {}).get(key)
        if sender is not None and not sender.muted_until:
            del self._senders[link.slug][key]

    async def refused(self, link: RoomLink, nick: str, key: str) -> None:
        """The bridge's limit refused a message of `key` (as `nick`): mute it if it keeps on."""
        mute_s = self.edge.config.flood_mute
        if mute_s <= 0 or link.is_ours(nick) or nick in self._privileged.get(link.slug, ()):
            return
        senders = self._senders.setdefault(link.slug, {})
        sender = senders.get(key)
        if sender is None:
            if len(senders) >= MAX_TRACKED:
                del senders[next(iter(senders))]
            sender = senders[key] = _Sender(nick=nick)
        sender.nick = nick
        sender.refusals += 1
        if sender.muted_until or sender.refusals < MUTE_AFTER:
            return
        if link.role != "moderator":
            if link.slug not in self._told_cannot:
                self._told_cannot.add(link.slug)
                logger.warning("xmpp: %s floods %s, but the relay is no moderator there (role %s): "
                               "the room still relays the flood", nick, link.room_jid, link.role or "none")
            return
        sender.muted_until = time.monotonic() + mute_s
        logger.warning("xmpp: %s (%s) keeps flooding %s: its voice is taken for %.0f s",
                       nick, key, link.room_jid, mute_s)
        await self._mute(link, sender, f"Flooding: more than the bridge's limit, {sender.refusals} times "
                                       f"in a row. Voice back in {mute_s:.0f} s.")

    async def tick(self, link: RoomLink) -> None:
        """Give back the voice of those whose time is up (every TICK, from the consumer)."""
        senders = self._senders.get(link.slug)
        if not senders:
            return
        now = time.monotonic()
        for key, sender in list(senders.items()):
            if sender.muted_until and now >= sender.muted_until:
                del senders[key]
                nick = self._current_nick(link, key, sender.nick)
                if nick is not None:
                    logger.info("xmpp: %s gets its voice back in %s", nick, link.room_jid)
                    await self._set_role(link, nick, "participant", "Flood mute over.")

    def forget(self, link: RoomLink) -> None:
        """The stream dropped or the room is gone: roles do not outlive the relay's visit."""
        self._senders.pop(link.slug, None)
        self._privileged.pop(link.slug, None)

    async def iq_answer(self, link: RoomLink, event: XmppIqEvent) -> bool:
        """Ours: True (a refusal is logged). Owners and admins cannot be muted (not-allowed)."""
        if not event["id"].startswith(IQ_PREFIX):
            return False
        senders = self._senders.get(link.slug, {})
        key = next((k for k, s in senders.items() if s.mute_iq == event["id"]), None)
        if key is not None:
            senders[key].mute_iq = ""
        if event["iq_type"] == "error":
            logger.warning("xmpp: %s refused a voice change (%s)", link.room_jid, event["error_condition"])
            if key is not None:
                # Not ours to silence (an owner or admin): no mute to undo later either.
                del senders[key]
        return True

    @staticmethod
    def _current_nick(link: RoomLink, key: str, nick: str) -> str | None:
        """Where the occupant is now: its nick may have changed; None when it has left."""
        for current in link.occupants:
            if link.sender_id(current) == key:
                return current
        return None

    async def _mute(self, link: RoomLink, sender: _Sender, reason: str) -> None:
        sender.mute_iq = await self._set_role(link, sender.nick, "visitor", reason)

    async def _set_role(self, link: RoomLink, nick: str, role: str, reason: str) -> str:
        item: RoleItem = {"nick": nick, "role": role, "reason": reason}
        iq_id = f"{IQ_PREFIX}{next(_iq_ids)}"
        await self.edge.send({"type": "xmpp.iq", "sender": link.relay_jid, "to": link.room_jid,
                              "id": iq_id, "iq_type": "set", "query": "admin", "roles": [item]})
        return iq_id
