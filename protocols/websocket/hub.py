"""The room hub: one channel-layer subscription per room per web process, fanned out locally.

Before it, every socket was a channel-layer member of its room's groups: each
message was one Redis delivery, one decode and one consumer dispatch per
socket. Now each web process (each event loop) has one channel of its own,
added to a room's groups while at least one local socket is in that room and
removed when the last one leaves, and one receive loop (supervised: `loop:web.hub`
in /readyz) that builds each frame once and offers it to every local socket of
the room (`Subscriber`, each with its own bounded `Outlet`). Each frame is also
serialized once (`text_frame`), so that a socket that takes writes gets those
bytes in one transport write; the frames of a batch stored together (one
`room.messages` of consecutive seqs) are joined once and written to each
socket that is at the batch's start in one write (one system call per socket
per batch, not per message).

Events are routed by what they carry: `room.message` by its message's `room`;
`room.messages`, `room.presence`, `devices.telemetry` by `room`; `access.changed`
by `room` or `user`. The database stays the source of truth: the hub may drop
(a full channel, a layer outage), and each socket fills a gap by `seq`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from channels.layers import get_channel_layer

from bridge.instruments import delivered
from bridge.layer import LayerMember, layer_call
from bridge.names import devices_group, room_access_group, room_group, user_access_group
from bridge.supervisor import Supervisor
from protocols.websocket.server import text_frame
from protocols.websocket.subscriber import Subscriber

logger = logging.getLogger(__name__)

# A `message` frame around an envelope already encoded (json.dumps' own separators).
MESSAGE_FRAME = '{"type": "message", "message": %s}'
# Core Redis layer forgets a group member after `group_expiry` (a day): renew well before.
RENEW_INTERVAL = 3600.0
# A batch's frames written to a socket in one go, at most (bytes): a socket takes a run
# only while its transport is below its high-water mark, so this bounds how far past it
# one write can go, as one frame does when they go one by one.
RUN_BYTES = 65536


@dataclass(eq=False)
class RoomFeed:
    """A room's local sockets and whether this process's channel is in its groups."""

    slug: str
    subscribers: set[Subscriber] = field(default_factory=set)
    joined: bool = False

    @property
    def groups(self) -> tuple[str, ...]:
        return room_group(self.slug), devices_group(self.slug), room_access_group(self.slug)


class RoomHub(LayerMember):
    """This event loop's hub (`current()` starts it); sockets `subscribe` and `unsubscribe`."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RoomHub] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.channel_layer = get_channel_layer()
        self.channel_name = ""  # set by the receive loop (the pub/sub layer subscribes to make one)
        self._groups = set()
        self.rooms: dict[str, RoomFeed] = {}
        self.users: dict[int, set[Subscriber]] = {}
        # Group changes one at a time, so a room's last leave and next enter reach the
        # layer in order, and a socket entering a room being joined waits for the join.
        self._lock = asyncio.Lock()
        self.supervisor = Supervisor("web")
        if self.channel_layer is not None:
            self.supervisor.run("hub", self._listen)
            self.supervisor.every("hub-renew", RENEW_INTERVAL, self._renew, first_delay=RENEW_INTERVAL)

    @classmethod
    def current(cls) -> RoomHub:
        loop = asyncio.get_running_loop()
        hub = cls._by_loop.get(loop)
        if hub is None:
            hub = cls._by_loop[loop] = cls()
        return hub

    @classmethod
    async def stop_all(cls) -> None:
        """For tests and shutdown: stop this loop's hub."""
        hub = cls._by_loop.pop(asyncio.get_running_loop(), None)
        if hub is not None:
            await hub.supervisor.stop()

    # --- sockets ----------------------------------------------------------------

    async def subscribe(self, sub: Subscriber) -> None:
        """From now on `sub` is offered its room's frames (held while it is SYNCING) and told of
        access changes of the room and of its user. The groups are joined before this returns
        (best effort: while the layer is down, on recovery)."""
        feed = self.rooms.get(sub.room)
        if feed is None:
            feed = self.rooms[sub.room] = RoomFeed(sub.room)
        feed.subscribers.add(sub)
        groups = []
        if sub.user_id is not None:
            users = self.users.setdefault(sub.user_id, set())
            if not users:
                groups.append(user_access_group(sub.user_id))
            users.add(sub)
        async with self._lock:
            if not feed.joined:
                feed.joined = True
                groups.extend(feed.groups)
            for group in groups:
                await self._join(group)

    async def unsubscribe(self, sub: Subscriber) -> None:
        """No more frames for `sub`; the last socket of a room (or user) takes the hub out of its groups."""
        sub.close()
        groups = []
        if sub.user_id is not None:
            users = self.users.get(sub.user_id)
            if users is not None and sub in users:
                users.discard(sub)
                if not users:
                    del self.users[sub.user_id]
                    groups.append(user_access_group(sub.user_id))
        feed = self.rooms.get(sub.room)
        if feed is not None:
            feed.subscribers.discard(sub)
        async with self._lock:
            if feed is not None and not feed.subscribers and feed.joined:
                feed.joined = False
                groups.extend(feed.groups)
                if self.rooms.get(feed.slug) is feed:
                    del self.rooms[feed.slug]
            for group in groups:
                await self._leave(group)

    async def _join(self, group: str) -> None:
        self._member_groups().add(group)
        if self.channel_name:
            await layer_call(self.channel_layer.group_add(group, self.channel_name), "group_add")

    async def _leave(self, group: str) -> None:
        # A socket of the same user or room may have entered meanwhile.
        if group in self._wanted():
            return
        self._member_groups().discard(group)
        if self.channel_name:
            await layer_call(self.channel_layer.group_discard(group, self.channel_name), "group_discard")

    def _wanted(self) -> set[str]:
        groups = {g for feed in self.rooms.values() if feed.joined for g in feed.groups}
        return groups | {user_access_group(user) for user in self.users}

    # --- the receive loop ---------------------------------------------------------

    async def _listen(self) -> None:
        if not self.channel_name:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            if self._member_groups():  # sockets entered before the channel existed
                await self.layer_recovered({"type": "layer.recovered"})
        while True:
            event = await self.channel_receive()
            if event.get("type") == "layer.recovered":
                await self.layer_recovered(event)
            else:
                self.route(event)

    async def layer_recovered_hook(self) -> None:
        """Groups joined again: every socket asks again for access and catches up."""
        for feed in list(self.rooms.values()):
            for sub in list(feed.subscribers):
                sub.recover()

    async def _renew(self) -> None:
        if not self.channel_name:
            return
        for group in sorted(self._member_groups()):
            await layer_call(self.channel_layer.group_add(group, self.channel_name), "group_add")

    def route(self, event: dict[str, Any]) -> None:
        """One event from the layer to the local sockets it concerns; never waits."""
        kind = event.get("type")
        try:
            if kind == "room.message":
                message = event["message"]
                text = MESSAGE_FRAME % (event.get("json") or json.dumps(message))
                self._offer_messages(message["room"], ((message["seq"], text),))
            elif kind == "room.messages":
                self._offer_messages(event["room"], ((item["seq"], MESSAGE_FRAME % item["json"])
                                                     for item in event["messages"]))
            elif kind == "room.presence":
                text = json.dumps({"type": "presence", "who": event["who"], "state": event["state"]})
                self._offer_frames(event["room"], text)
            elif kind == "devices.telemetry":
                frame = {"type": "telemetry", "device": event["device"], "metrics": event["metrics"]}
                self._offer_frames(event["room"], json.dumps(frame))
            elif kind == "access.changed":
                if "room" in event:
                    targets = self._room(event["room"])
                else:
                    targets = tuple(self.users.get(event["user"], ()))
                for sub in targets:
                    sub.access_changed(event)
            else:
                logger.debug("hub: ignored a %r event", kind)
        except (KeyError, TypeError) as exc:  # a sender's bug must not end the receive loop
            logger.warning("hub: dropped a malformed %r event (%s: %s)", kind, type(exc).__name__, exc)

    def _offer_messages(self, room: str, messages: Iterable[tuple[int, str]]) -> None:
        """Each (seq, text) to the room's sockets, in order. A run of consecutive seqs (a
        batch stored together) goes to each socket that is at its start as one write."""
        subs = self._room(room)
        if not subs:
            return
        written = 0
        for run in _runs(messages):
            if len(run) == 1:
                seq, text, frame = run[0]
                for sub in subs:
                    written += sub.offer_message(seq, text, frame)
            else:
                joined = b"".join(frame for _, _, frame in run)
                for sub in subs:
                    written += sub.offer_run(run, joined)
        delivered("web", written)

    def _offer_frames(self, room: str, text: str) -> None:
        subs = self._room(room)
        if subs:
            frame = text_frame(text)
            for sub in subs:
                sub.offer_frame(text, frame)

    def _room(self, slug: str) -> tuple[Subscriber, ...]:
        feed = self.rooms.get(slug)
        return tuple(feed.subscribers) if feed is not None else ()


def _runs(messages: Iterable[tuple[int, str]]) -> Iterator[list[tuple[int, str, bytes]]]:
    """(seq, text, frame) in runs of consecutive seqs, each at most RUN_BYTES of frames
    (one message may be more): what one socket is written in one go."""
    run: list[tuple[int, str, bytes]] = []
    size = 0
    for seq, text in messages:
        frame = text_frame(text)
        if run and (seq != run[-1][0] + 1 or size + len(frame) > RUN_BYTES):
            yield run
            run, size = [], 0
        run.append((seq, text, frame))
        size += len(frame)
    if run:
        yield run
