"""What the XMPP edge knows about one bridged room: its state, occupants, puppets, what is in flight.

Plain state, no I/O: the consumer's parts read stanzas into it and decide what to send.

The life of a room link (`LinkState`):

    OFFLINE --join--> JOINING --self-presence--> CONFIGURING (we own the room: owner form)
                                              \\-> CATCHING_UP (the room replays its history)
    CONFIGURING --form submitted--> CATCHING_UP --echo of our presence update--> READY
    CATCHING_UP --echo, and `unsure`--> CHECKING --archive answered (or timed out)--> READY
    any --stream lost--> OFFLINE;  any --no longer bridged--> LEAVING --self-unavailable--> gone
    JOINING --the room refuses us--> REFUSED (tried again at the next resync)
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from bridge.envelope import Envelope, Sender
from protocols.xmpp.addresses import MAX_NICK_ATTEMPTS, Jid, puppet_jid, puppet_nick

SenderKey = tuple[str, str]
# Outbound messages not yet echoed by the room, at most this many per room at a time
# (XMPP_WINDOW; `EdgeConfig.window`). Small: after a drop, the history the room replays on
# rejoin must still hold every one of them, and servers cap that history (Prosody's and
# ejabberd's defaults: 20 messages).
WINDOW = 10
# History the relay asks for on (re)join (the server may give less): > the window.
REJOIN_HISTORY = 50


class LinkState(enum.Enum):
    OFFLINE = "offline"  # no stream, or not joined yet
    JOINING = "joining"  # the relay's join is sent, no answer yet
    CONFIGURING = "configuring"  # we own the room: reading and submitting its owner form
    CATCHING_UP = "catching up"  # in the room; the history it replays is still arriving
    # What was sent may be unconfirmed (`unsure`): asking the room's archive (XEP-0313)
    # which of it the room has, since a server that restarted replays no history (ejabberd
    # keeps it in memory only).
    CHECKING = "checking the archive"
    READY = "ready"  # bridging both ways
    REFUSED = "refused"  # the room refused the relay; the next resync tries again
    LEAVING = "leaving"  # no longer bridged; our occupants are leaving


class PuppetState(enum.Enum):
    OUT = "out"
    JOINING = "joining"
    IN = "in"
    # The room keeps refusing it: its messages go through the relay until a retry works.
    FAILED = "failed"


def sender_key(sender: Sender) -> SenderKey:
    return (sender["kind"], sender["name"])


@dataclass
class Puppet:
    """A bridged sender's occupant: joined while its sender is online or still has to speak."""

    sender: Sender
    jid: str
    attempt: int = 0
    state: PuppetState = PuppetState.OUT
    online: bool = False
    # Monotonic time after which a FAILED puppet may try joining again.
    retry_at: float = 0.0
    failures: int = 0

    @property
    def nick(self) -> str:
        return puppet_nick(self.sender, self.attempt)

    @property
    def seated(self) -> bool:
        """Joined, or on its way: the room may show its nick as ours."""
        return self.state in (PuppetState.IN, PuppetState.JOINING)


@dataclass
class InFlight:
    seq: int
    message_id: str  # the stanza id and origin-id; "" when nothing was sent (skipped)
    puppet: SenderKey | None
    acked: bool = False
    sent_at: float = 0.0  # monotonic; 0 for skipped entries (acked at once)


@dataclass
class RoomLink:
    slug: str
    room_pk: int
    room_jid: str
    relay_jid: str
    relay_nick: str
    component: str
    title: str = ""
    private: bool = False
    state: LinkState = LinkState.OFFLINE
    # What the room lets the relay do: its affiliation and role from its self-presence.
    affiliation: str = ""
    role: str = ""
    # What the bridge would need and the room does not give it (said in the log and the admin).
    lacks: list[str] = field(default_factory=list)
    # The id of the owner-form IQ in progress while CONFIGURING.
    pending_iq: str = ""
    # A private room's member list asked for (`members`), and our puppets made members.
    members_iq: str = ""
    affiliated: set[str] = field(default_factory=set)
    occupants: dict[str, str] = field(default_factory=dict)  # nick -> real JID ("" unknown)
    puppets: dict[SenderKey, Puppet] = field(default_factory=dict)
    cursor_seq: int = 0  # delivered and confirmed, as stored
    sent_upto: int = 0  # sent (or skipped) in this session
    inflight: list[InFlight] = field(default_factory=list)
    # Our message ids seen in the join history (sent before a drop, in the room already), with
    # the nick that said them: after a server restart our puppets are no occupants when the
    # history comes, so whose it was is decided per message (`in_room_already`).
    in_room: dict[str, str] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    window: int = WINDOW
    # Stored messages after `ahead_upto`, read ahead by the pump (at most its PAGE), so that
    # what an echo lets out costs no query; valid while `ahead_upto == sent_upto`.
    ahead: deque[Envelope] = field(default_factory=deque)
    ahead_upto: int = -1
    # What was sent may be in the room unconfirmed (ours were in flight at the last drop, or
    # a fresh process finds stored messages past the cursor): the join asks the room's
    # archive about them (`archive_iq`, asked at `checking_since`, monotonic).
    unsure: bool = False
    archive_iq: str = ""
    checking_since: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state is LinkState.READY

    def reset(self) -> None:
        """The stream dropped: nothing is joined, anything unconfirmed is sent again."""
        self.state = LinkState.OFFLINE
        self.pending_iq = self.members_iq = self.archive_iq = ""
        self.unsure = self.unsure or bool(self.inflight)
        self.affiliated.clear()
        self.occupants.clear()
        for puppet in self.puppets.values():
            puppet.state = PuppetState.OUT
        self.inflight.clear()
        self.in_room.clear()
        self.ahead.clear()
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
        if real:
            # The room shows real JIDs: that, not the nick, says whose it is.
            return Jid.parse(real).domain == self.component.lower()
        return any(p.nick == nick and p.seated for p in self.puppets.values())

    def in_room_already(self, message_id: str, sender: Sender) -> bool:
        """The join history shows `message_id` said by the relay or by a nick `sender`'s puppet
        takes: sent before the drop, so not sent again. Any other nick with our id is someone
        copying it, and does not stop the message."""
        nick = self.in_room.get(message_id)
        if nick is None:
            return False
        if nick == self.relay_nick:
            return True  # a system message, or said through the relay
        return nick in {puppet_nick(sender, attempt) for attempt in range(MAX_NICK_ATTEMPTS + 1)}

    def sender_id(self, nick: str) -> str:
        """Who a nick is, as the limit and the flood mute count it: its real bare JID where the
        room shows it (a nick change or a squatter keeps no quota), else its occupant JID."""
        real = self.real_jid(nick)
        return Jid.parse(real).bare.lower() if real else f"{self.room_jid}/{nick}"

    def real_jid(self, nick: str) -> str:
        return self.occupants.get(nick, "")

    def window_left(self) -> int:
        return self.window - len(self.inflight)

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
