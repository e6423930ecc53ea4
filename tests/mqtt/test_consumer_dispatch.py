"""MqttConsumer's event loop: what the server has queued is dispatched in a row, in
order, without starving the channel layer (protocols/mqtt/consumer.py, `_serve`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from channels.layers import get_channel_layer

from protocols.mqtt.consumer import DISPATCH_TURN, MqttConsumer
from protocols.mqtt.events import RECEIVE_NOWAIT


class Recorder(MqttConsumer):
    """Records every event it is given, server's and layer's, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []
        self.ready = asyncio.Event()

    async def dispatch(self, message: dict[str, Any]) -> None:
        self.seen.append(message["type"] + ":" + str(message.get("n", "")))
        self.ready.set()


class Server:
    """The server's side of the scope: a queue, and counts of how it was read."""

    def __init__(self, *, nowait: bool = True) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.awaited = 0  # receive() calls: one task and one asyncio.wait each
        self.scope: dict[str, Any] = {"type": "mqtt", "client_id": "test", "broker": "test", "protocol": 5}
        if nowait:
            self.scope["extensions"] = {RECEIVE_NOWAIT: self.receive_nowait}

    async def receive(self) -> dict[str, Any]:
        self.awaited += 1
        return await self.queue.get()

    def receive_nowait(self) -> dict[str, Any] | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def put(self, first: int, count: int) -> None:
        for n in range(first, first + count):
            self.queue.put_nowait({"type": "mqtt.message", "n": n})


async def _send(event: dict[str, Any]) -> None:
    pass


@contextlib.asynccontextmanager
async def running(app: Recorder, server: Server) -> Any:
    task = asyncio.create_task(app(server.scope, server.receive, _send))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_queued_events_are_dispatched_in_order_with_one_wait_per_turn() -> None:
    server = Server()
    server.put(0, 3 * DISPATCH_TURN)
    app = Recorder()
    async with running(app, server):
        await _until(lambda: len(app.seen) == 3 * DISPATCH_TURN)
        assert app.seen == [f"mqtt.message:{n}" for n in range(3 * DISPATCH_TURN)]
        # One awaited receive per turn of up to DISPATCH_TURN + 1 events (plus the one now
        # pending), where Channels' loop awaits one per event.
        assert server.awaited <= 4


async def test_without_the_extension_every_event_is_awaited_and_none_is_lost() -> None:
    server = Server(nowait=False)
    server.put(0, 50)
    app = Recorder()
    async with running(app, server):
        await _until(lambda: len(app.seen) == 50)
        assert app.seen == [f"mqtt.message:{n}" for n in range(50)]
        assert server.awaited >= 50


async def test_events_arriving_later_are_taken_as_they_come() -> None:
    server = Server()
    app = Recorder()
    async with running(app, server):
        for batch in range(5):
            server.put(batch * 10, 10)
            await _until(lambda batch=batch: len(app.seen) == (batch + 1) * 10)
        assert app.seen == [f"mqtt.message:{n}" for n in range(50)]


async def test_the_channel_layer_gets_its_turn_while_the_server_queue_never_empties() -> None:
    class Yielding(Recorder):  # as real handlers do: the feeder runs during a turn
        async def dispatch(self, message: dict[str, Any]) -> None:
            await super().dispatch(message)
            await asyncio.sleep(0)

    server = Server()
    app = Yielding()
    layer = get_channel_layer()
    assert layer is not None
    async with running(app, server):
        server.put(0, 1)
        await _until(lambda: bool(app.seen))
        feeding = True

        async def feed() -> None:  # keeps the server's queue full
            n = 1
            while feeding:
                if server.queue.qsize() < 2 * DISPATCH_TURN:
                    server.put(n, DISPATCH_TURN)
                    n += DISPATCH_TURN
                await asyncio.sleep(0)

        feeder = asyncio.create_task(feed())
        try:
            await _until(lambda: len(app.seen) > 4 * DISPATCH_TURN)
            await layer.send(app.channel_name, {"type": "room.message", "n": "layer"})
            await _until(lambda: "room.message:layer" in app.seen)
        finally:
            feeding = False
            await feeder
        # The layer's message came while the server's events were still flowing.
        index = app.seen.index("room.message:layer")
        assert len(app.seen) > index + 1
        assert all(e.startswith("mqtt.message:") for e in app.seen[index + 1:])


async def test_a_handler_that_raises_ends_the_instance() -> None:
    class Failing(Recorder):
        async def dispatch(self, message: dict[str, Any]) -> None:
            await super().dispatch(message)
            if message.get("n") == 3:
                raise RuntimeError("handler failed")

    server = Server()
    server.put(0, 10)
    app = Failing()
    task = asyncio.create_task(app(server.scope, server.receive, _send))
    with pytest.raises(RuntimeError, match="handler failed"):
        await asyncio.wait_for(task, 5)
    # Nothing after the failing event was dispatched; the rest stays queued.
    assert app.seen == [f"mqtt.message:{n}" for n in range(4)]
    assert server.queue.qsize() == 6
