"""The room hub and its sockets, in-process on the in-memory channel layer (no database)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import get_channel_layer

from bridge.names import devices_group, room_access_group, room_group, user_access_group
from protocols.websocket import hub as hub_module
from protocols.websocket.hub import MESSAGE_FRAME, RoomHub
from protocols.websocket.outlet import ClientGone, Outlet
from protocols.websocket.server import text_frame
from protocols.websocket.subscriber import State, Subscriber

pytestmark = pytest.mark.asyncio


class FakeSocket:
    """A socket's server side: records frames; `stuck` makes every send wait (a client that does not read)."""

    def __init__(self, *, stuck: bool = False, timeout: float = 5.0, limit: int = 8, writer: bool = False) -> None:
        self.frames: list[str] = []
        self.stuck = stuck
        self.unstick = asyncio.Event()
        self.gone: list[str] = []
        # With `writer`, the server's frame writer: takes serialized frames unless `stuck`
        # (a paused transport), as `WebSocketProtocol.write_frame` does.
        self.written: list[bytes] = []
        self.outlet = Outlet(self.send, timeout=timeout, limit=limit, on_gone=self.gone.append,
                             write_frame=self.write_frame if writer else None)
        self.database: dict[int, str] = {}  # what a catch-up reads: seq -> text
        self.catch_ups = 0
        self.checks: list[dict[str, Any]] = []
        self.refuse_access = False

    def write_frame(self, frame: bytes) -> bool:
        if self.stuck:
            return False
        self.written.append(frame)
        self.frames.extend(unframe(frame))
        return True

    async def send(self, message: dict[str, Any]) -> None:
        if self.stuck:
            await self.unstick.wait()
        self.frames.append(message["text"])

    def subscriber(self, room: str = "lobby", user_id: int | None = None) -> Subscriber:
        self.sub = Subscriber(room=room, user_id=user_id, outlet=self.outlet, catch_up=self.catch_up,
                              recheck=self.recheck, fail=self.gone.append)
        return self.sub

    async def catch_up(self) -> None:
        self.catch_ups += 1
        for seq in sorted(s for s in self.database if s > self.sub.last_seq):
            await self.outlet.write(self.database[seq])
            self.sub.last_seq = seq

    async def recheck(self, event: dict[str, Any]) -> bool:
        self.checks.append(event)
        return self.refuse_access

    def seqs(self) -> list[int]:
        return [json.loads(f)["message"]["seq"] for f in self.frames if '"type": "message"' in f]


def unframe(data: bytes) -> list[str]:
    """The texts of the unmasked text frames in `data`, which holds whole frames only."""
    texts = []
    while data:
        assert data[0] == 0x81, data[:2]
        size, start = data[1], 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        texts.append(data[start:start + size].decode())
        data = data[start + size:]
    return texts


def message_event(seq: int, room: str = "lobby") -> dict[str, Any]:
    envelope = {"seq": seq, "room": room, "text": f"m{seq}"}
    return {"type": "room.message", "message": envelope, "json": json.dumps(envelope)}


def frame(seq: int, room: str = "lobby") -> str:
    return MESSAGE_FRAME % json.dumps({"seq": seq, "room": room, "text": f"m{seq}"})


@pytest.fixture
async def hub() -> AsyncIterator[RoomHub]:
    hub = RoomHub.current()
    try:
        yield hub
    finally:
        await RoomHub.stop_all()


async def until(condition: Any, what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


def members(group: str) -> set[str]:
    layer = get_channel_layer()
    return set(layer.groups.get(group, {}))


async def test_one_channel_joins_a_rooms_groups_for_its_first_socket_and_leaves_after_the_last(hub: RoomHub) -> None:
    first, second = FakeSocket(), FakeSocket()
    await hub.subscribe(first.subscriber(user_id=7))
    await until(lambda: hub.channel_name, "the hub's channel")
    await until(lambda: hub.channel_name in members(room_group("lobby")), "joined")
    for group in (room_group("lobby"), devices_group("lobby"), room_access_group("lobby"), user_access_group(7)):
        assert hub.channel_name in members(group), group
    await hub.subscribe(second.subscriber())
    await hub.unsubscribe(first.sub)
    # Still one socket in the room: still in its groups; the user's last socket is gone.
    assert hub.channel_name in members(room_group("lobby"))
    assert hub.channel_name not in members(user_access_group(7))
    await hub.unsubscribe(second.sub)
    for group in (room_group("lobby"), devices_group("lobby"), room_access_group("lobby")):
        assert hub.channel_name not in members(group), group
    assert hub.rooms == {} and hub.users == {}


async def test_a_message_sent_to_the_group_is_encoded_once_and_reaches_every_local_socket(hub: RoomHub) -> None:
    sockets = [FakeSocket() for _ in range(3)]
    for sock in sockets:
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
    other = FakeSocket()
    await hub.subscribe(other.subscriber(room="elsewhere"))
    other.sub.go_live()
    await until(lambda: hub.channel_name in members(room_group("lobby")), "joined")
    await get_channel_layer().group_send(room_group("lobby"), message_event(1))
    await until(lambda: all(s.frames for s in sockets), "delivered")
    assert [s.frames for s in sockets] == [[frame(1)]] * 3
    assert sockets[0].frames[0] is sockets[1].frames[0]  # the same string: encoded once
    assert other.frames == []


async def test_frames_wait_while_a_socket_syncs_and_follow_its_history(hub: RoomHub) -> None:
    sock = FakeSocket()
    await hub.subscribe(sock.subscriber())
    for seq in (3, 4, 5):
        hub.route(message_event(seq))
    assert sock.frames == []  # still reading history
    sock.sub.last_seq = 4  # history ended at 4
    sock.sub.go_live()
    assert sock.seqs() == [5] and sock.sub.state is State.LIVE


async def test_one_stuck_socket_does_not_hold_up_the_others_and_is_let_go_after_the_timeout(hub: RoomHub) -> None:
    fast = [FakeSocket() for _ in range(3)]
    slow = FakeSocket(stuck=True, timeout=0.3, limit=100)
    for sock in [*fast, slow]:
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
    for seq in range(1, 21):
        hub.route(message_event(seq))
    # Written synchronously by `route` itself: nothing waited for the stuck socket.
    assert [s.seqs() for s in fast] == [list(range(1, 21))] * 3
    assert slow.frames == [] and slow.outlet.blocked
    await until(lambda: slow.gone, "the stuck socket let go")
    assert "stayed full for 0.3 s" in slow.gone[0]
    assert not slow.outlet.offer(frame(21))
    with pytest.raises(ClientGone):
        await slow.outlet.write("late")


async def test_a_socket_that_reads_again_gets_its_queue_in_order(hub: RoomHub) -> None:
    sock = FakeSocket(stuck=True, limit=100)
    await hub.subscribe(sock.subscriber())
    sock.sub.go_live()
    for seq in range(1, 6):
        hub.route(message_event(seq))
    sock.stuck = False
    sock.unstick.set()
    await until(lambda: len(sock.frames) == 5, "the queue written")
    assert sock.seqs() == [1, 2, 3, 4, 5] and not sock.outlet.blocked


async def test_a_dropped_message_is_filled_from_the_database_before_the_next_one(hub: RoomHub) -> None:
    sock = FakeSocket()
    await hub.subscribe(sock.subscriber())
    sock.sub.go_live()
    sock.database = {1: frame(1), 2: frame(2), 3: frame(3)}
    hub.route(message_event(1))
    hub.route(message_event(3))  # 2 was dropped by the layer
    hub.route(message_event(4))
    await until(lambda: sock.sub.state is State.LIVE and len(sock.frames) == 4, "the gap filled")
    assert sock.seqs() == [1, 2, 3, 4] and sock.catch_ups == 1
    hub.route(message_event(3))  # a repeat
    assert sock.seqs() == [1, 2, 3, 4]


async def test_a_full_queue_drops_and_the_socket_catches_up_once_it_reads(hub: RoomHub) -> None:
    sock = FakeSocket(stuck=True, limit=2)
    await hub.subscribe(sock.subscriber())
    sock.sub.go_live()
    sock.database = {n: frame(n) for n in range(1, 9)}
    for seq in range(1, 7):  # 1 blocks, 2 and 3 queue, 4 is refused: the socket syncs
        hub.route(message_event(seq))
    assert sock.sub.state is State.SYNCING
    sock.stuck = False
    sock.unstick.set()
    await until(lambda: sock.sub.state is State.LIVE, "caught up")
    hub.route(message_event(7))
    hub.route(message_event(8))
    assert sock.seqs() == list(range(1, 9))


async def test_access_changes_reach_the_rooms_sockets_and_the_users_and_close_those_refused(hub: RoomHub) -> None:
    alice, bob, elsewhere = FakeSocket(), FakeSocket(), FakeSocket()
    await hub.subscribe(alice.subscriber(user_id=1))
    await hub.subscribe(bob.subscriber(user_id=2))
    await hub.subscribe(elsewhere.subscriber(room="other", user_id=1))
    for sock in (alice, bob, elsewhere):
        sock.sub.go_live()
    bob.refuse_access = True
    hub.route({"type": "access.changed", "reason": "membership_changed", "room": "lobby"})
    await until(lambda: alice.checks and bob.sub.state is State.CLOSED, "checked")
    assert elsewhere.checks == [] and alice.sub.state is State.LIVE
    hub.route({"type": "access.changed", "reason": "user_changed", "user": 1, "session": "tag"})
    await until(lambda: len(alice.checks) == 2 and elsewhere.checks, "checked")
    assert elsewhere.checks == [{"type": "access.changed", "reason": "user_changed", "user": 1, "session": "tag"}]
    assert len(bob.checks) == 1  # closed: not asked again
    hub.route(message_event(1))
    assert bob.frames == [] and alice.seqs() == [1]


async def test_after_a_layer_recovery_every_socket_asks_for_access_and_catches_up(hub: RoomHub) -> None:
    sockets = [FakeSocket() for _ in range(2)]
    for sock in sockets:
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
        sock.database = {1: frame(1), 2: frame(2)}  # stored while the layer was away
    await until(lambda: hub.channel_name, "the hub's channel")
    await get_channel_layer().send(hub.channel_name, {"type": "layer.recovered"})
    await until(lambda: all(s.seqs() == [1, 2] and s.sub.state is State.LIVE for s in sockets), "caught up")
    assert all(s.checks == [{"reason": "layer_recovered"}] for s in sockets)


async def test_presence_and_telemetry_frames_reach_only_their_room(hub: RoomHub) -> None:
    here, there = FakeSocket(), FakeSocket()
    await hub.subscribe(here.subscriber())
    await hub.subscribe(there.subscriber(room="other"))
    here.sub.go_live()
    there.sub.go_live()
    hub.route({"type": "room.presence", "who": {"kind": "user", "name": "a"}, "state": "online", "room": "lobby"})
    hub.route({"type": "devices.telemetry", "device": "d1", "metrics": {}, "room": "lobby"})
    hub.route({"type": "room.presence", "who": {"kind": "user", "name": "a"}})  # no room: dropped, logged
    assert [json.loads(f)["type"] for f in here.frames] == ["presence", "telemetry"]
    assert there.frames == []


async def test_a_failing_catch_up_ends_the_socket_instead_of_leaving_it_silent(hub: RoomHub) -> None:
    sock = FakeSocket()
    await hub.subscribe(sock.subscriber())
    sock.sub.go_live()

    async def broken() -> None:
        raise RuntimeError("database away")

    sock.sub._catch_up = broken
    hub.route(message_event(5))  # a gap: catch-up
    await until(lambda: sock.gone, "let go")
    assert "database away" in sock.gone[0] and sock.sub.state is State.CLOSED


async def test_a_frame_is_serialized_once_and_written_as_bytes_to_every_socket_that_takes_them(hub: RoomHub) -> None:
    sockets = [FakeSocket(writer=True) for _ in range(3)]
    plain = FakeSocket()  # another server: no frame writer, the ordinary send
    for sock in [*sockets, plain]:
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
    hub.route(message_event(1))
    hub.route({"type": "room.messages", "room": "lobby",
               "messages": [{"seq": 2, "json": json.dumps({"seq": 2, "room": "lobby", "text": "m2"})}]})
    hub.route({"type": "room.presence", "who": {"kind": "user", "name": "a"}, "state": "online", "room": "lobby"})
    assert [s.seqs() for s in [*sockets, plain]] == [[1, 2]] * 4
    assert [len(s.written) for s in sockets] == [3, 3, 3]
    assert sockets[0].written[0] == text_frame(frame(1))
    assert sockets[0].written[0] is sockets[2].written[0]  # the same bytes: serialized once
    assert plain.written == [] and plain.frames == sockets[0].frames


async def test_a_socket_whose_writer_declines_queues_in_order_and_is_still_let_go_when_stuck(hub: RoomHub) -> None:
    reads_again = FakeSocket(writer=True, stuck=True, limit=100)
    never_reads = FakeSocket(writer=True, stuck=True, timeout=0.3, limit=100)
    for sock in (reads_again, never_reads):
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
    for seq in range(1, 4):
        hub.route(message_event(seq))
    assert reads_again.outlet.blocked and reads_again.written == []
    reads_again.stuck = False
    reads_again.unstick.set()
    await until(lambda: not reads_again.outlet.blocked, "the queue written")
    hub.route(message_event(4))  # nothing queued any more: written as bytes again
    assert reads_again.seqs() == [1, 2, 3, 4] and len(reads_again.written) == 1
    await until(lambda: never_reads.gone, "the stuck socket let go")
    assert "stayed full for 0.3 s" in never_reads.gone[0]


def batch_event(seqs: list[int], room: str = "lobby", text: str = "m") -> dict[str, Any]:
    """A `room.messages` event as `messages_fanout` sends it."""
    return {"type": "room.messages", "room": room,
            "messages": [{"seq": seq, "json": json.dumps({"seq": seq, "room": room, "text": f"{text}{seq}"})}
                         for seq in seqs]}


async def test_a_batch_of_consecutive_messages_is_joined_once_and_is_one_write_per_socket(hub: RoomHub) -> None:
    sockets = [FakeSocket(writer=True) for _ in range(3)]
    plain = FakeSocket()  # no frame writer: one send per message, as before
    for sock in [*sockets, plain]:
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
    hub.route(message_event(1))
    hub.route(batch_event([2, 3, 4, 5]))
    assert [s.seqs() for s in [*sockets, plain]] == [[1, 2, 3, 4, 5]] * 4
    assert [len(s.written) for s in sockets] == [2, 2, 2]
    assert sockets[0].written[1] == b"".join(text_frame(frame(seq)) for seq in (2, 3, 4, 5))
    assert sockets[0].written[1] is sockets[2].written[1]  # joined once for every socket
    assert [s.sub.last_seq for s in [*sockets, plain]] == [5] * 4
    assert all(s.catch_ups == 0 for s in [*sockets, plain])


async def test_a_socket_not_at_the_start_of_a_batch_takes_it_one_by_one(hub: RoomHub) -> None:
    ahead, behind = FakeSocket(writer=True), FakeSocket(writer=True)
    for sock in (ahead, behind):
        await hub.subscribe(sock.subscriber())
        sock.sub.go_live()
    ahead.sub.last_seq = 2  # already wrote 1 and 2 (its history)
    behind.database = {1: frame(1)}  # 1 was dropped on its way here: only the database has it
    hub.route(batch_event([2, 3, 4]))
    assert ahead.seqs() == [3, 4] and len(ahead.written) == 2  # the repeat skipped, the rest one by one
    await until(lambda: behind.sub.state is State.LIVE and behind.catch_ups, "caught up")
    assert behind.seqs() == [1, 2, 3, 4]  # the gap filled first, then the batch, in order


async def test_a_batch_waits_for_a_syncing_socket_and_for_a_blocked_one_in_order(hub: RoomHub) -> None:
    syncing, blocked = FakeSocket(writer=True), FakeSocket(writer=True, stuck=True, limit=100)
    await hub.subscribe(syncing.subscriber())
    await hub.subscribe(blocked.subscriber())
    blocked.sub.go_live()
    hub.route(message_event(1))  # the blocked socket's send waits; it is queued behind
    hub.route(batch_event([2, 3, 4]))
    assert syncing.frames == [] and blocked.written == [] and blocked.outlet.blocked
    syncing.sub.go_live()  # its history written: what was held follows
    assert syncing.seqs() == [1, 2, 3, 4]
    blocked.stuck = False
    blocked.unstick.set()
    await until(lambda: not blocked.outlet.blocked, "the queue written")
    assert blocked.seqs() == [1, 2, 3, 4]
    hub.route(batch_event([5, 6]))  # nothing queued any more: one write again
    assert blocked.seqs() == [1, 2, 3, 4, 5, 6] and len(blocked.written) == 1


async def test_a_batch_splits_where_its_seqs_break_and_where_its_frames_grow_past_a_run(hub: RoomHub) -> None:
    sock = FakeSocket(writer=True)
    await hub.subscribe(sock.subscriber())
    sock.sub.go_live()
    sock.database = {3: frame(3), 4: frame(4)}
    hub.route(batch_event([1, 2, 5, 6]))  # 3 and 4 come from the database, in between
    await until(lambda: sock.sub.state is State.LIVE and sock.catch_ups, "caught up")
    assert sock.seqs() == [1, 2, 3, 4, 5, 6]
    assert [len(unframe(w)) for w in sock.written] == [2]  # 5 and 6 were held, then written one by one
    big = "x" * (hub_module.RUN_BYTES // 4)
    hub.route(batch_event(list(range(7, 12)), text=big))  # five frames of a little over a quarter of a run each
    assert [len(unframe(w)) for w in sock.written[-2:]] == [3, 2]
    assert max(len(w) for w in sock.written) <= hub_module.RUN_BYTES
    assert sock.seqs() == list(range(1, 12))
