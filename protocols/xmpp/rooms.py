"""What the XMPP edge knows about one bridged room: occupants, puppets, and what is in flight.

Plain state, no I/O: the consumer reads stanzas into it and decides what to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.envelope import Sender
from protocols.xmpp.addresses import Jid, puppet_jid, puppet_nick

SenderKey = tuple[str, str]
# Outbound messages not yet echoed by the room, at most this many per room at a time.
WINDOW = 20
# History the relay asks for on (re)join: what was sent but not confirmed before a drop. > WINDOW.
REJOIN_HISTORY = 50


def sender_key(sender: Sender) -> SenderKey:
    return (sender["kind"], sender["name"])


@dataclass
class Puppet:
    """A bridged sender's occupant: joined while its sender is online or still has to speak."""

    sender: Sender
    jid: str
    attempt: int = 0
    joined: bool = False
    joining: bool = False
    online: bool = False

    @property
    def nick(self) -> str:
        return puppet_nick(self.sender, self.attempt)


@dataclass
class InFlight:
    seq: int
    message_id: str  # the stanza id and origin-id; "" when nothing was sent (skipped)
    puppet: SenderKey | None
    acked: bool = False


@dataclass
class RoomLink:
    slug: str
    room_pk: int
    room_jid: str
    relay_jid: str
    relay_nick: str
    component: str
    # The relay's self-presence arrived; the room's subject ends the join history: ready.
    relay_joined: bool = False
    ready: bool = False
    occupants: dict[str, str] = field(default_factory=dict)  # nick -> real JID ("" unknown)
    puppets: dict[SenderKey, Puppet] = field(default_factory=dict)
    cursor_seq: int = 0  # delivered and confirmed, as stored
    sent_upto: int = 0  # sent (or skipped) in this session
    inflight: list[InFlight] = field(default_factory=list)
    # Our message ids seen in the join history: sent before a drop, in the room already.
    in_room: set[str] = field(default_factory=set)
    failures: dict[int, int] = field(default_factory=dict)

    def reset(self) -> None:
        """The stream dropped: nothing is joined, anything unconfirmed is sent again."""
        self.relay_joined = False
        self.ready = False
        self.occupants.clear()
        for puppet in self.puppets.values():
            puppet.joined = puppet.joining = False
        self.inflight.clear()
        self.in_room.clear()
        self.sent_upto = self.cursor_seq

    def puppet(self, sender: Sender) -> Puppet:
        key = sender_key(sender)
        found = self.puppets.get(key)
        if found is None:
            found = Puppet(sender=sender, jid=puppet_jid(sender, component=self.component))
            self.puppets[key] = found
        return found

    def puppet_by_jid(self, jid: str) -> Puppet | None:
        for puppet in self.puppets.values():
            if puppet.jid == jid:
                return puppet
        return None

    def is_ours(self, nick: str) -> bool:
        """A nick of the bridge's relay or of one of its puppets (never bridged back)."""
        if nick == self.relay_nick:
            return True
        real = self.occupants.get(nick, "")
        if real and Jid.parse(real).domain == self.component.lower():
            return True
        return any(p.nick == nick and (p.joined or p.joining) for p in self.puppets.values())

    def real_jid(self, nick: str) -> str:
        return self.occupants.get(nick, "")

    def window_left(self) -> int:
        return WINDOW - len(self.inflight)

    def ack(self, message_id: str) -> int | None:
        """The room echoed one of ours. Returns the seq the cursor may move to, if it moves."""
        for entry in self.inflight:
            if entry.message_id == message_id:
                entry.acked = True
                break
        else:
            return None
        return self._confirmed_prefix()

    def skip(self, seq: int) -> int | None:
        """Nothing to send for `seq` (from XMPP, or in the room already)."""
        self.inflight.append(InFlight(seq=seq, message_id="", puppet=None, acked=True))
        self.sent_upto = seq
        return self._confirmed_prefix()

    def _confirmed_prefix(self) -> int | None:
        to_seq = None
        while self.inflight and self.inflight[0].acked:
            to_seq = self.inflight.pop(0).seq
        return to_seq

    def busy(self, key: SenderKey) -> bool:
        return any(entry.puppet == key for entry in self.inflight)
