"""The base class of MQTT consumers: dispatch by event type, like Channels' WebSocket consumers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from protocols.mqtt.events import (
    RECEIVE_NOWAIT,
    ConnectEvent,
    DisconnectEvent,
    DrainEvent,
    MessageEvent,
    PublishedEvent,
    PublishEvent,
    SubscribeEvent,
    UnsubscribeEvent,
)

logger = logging.getLogger(__name__)

# Events already queued by the server that are dispatched in a row, at most, before the
# channel layer's next message gets its turn.
DISPATCH_TURN = 64


class MqttConsumer(AsyncConsumer):
    """One instance per broker connection of the protocol server (it outlives reconnects).

    Subclasses implement the hooks `connect`, `receive` and `disconnect`.
    Events run one at a time in arrival order, so messages from one device are
    handled in the order the broker delivered them. A message is acknowledged
    after `receive` returns (or, with `auto_ack = False`, when the subclass
    calls `ack`); if `receive` raises, it is not, and the broker redelivers it
    after the next reconnect.
    """

    # False: the subclass calls `ack` itself once a message is safe (batching writers).
    auto_ack = True
    _background: set[asyncio.Task[None]]
    channel_receive: Callable[[], Awaitable[dict[str, Any]]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # publish_id -> its outcome, for `publish_confirmed`: as many as the caller has in flight.
        self._confirmations: dict[int, asyncio.Future[PublishedEvent]] = {}
        self._publish_ids = itertools.count(1)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._background = set()
        self._failure: BaseException | None = None
        try:
            await self._serve(scope, receive, send)
        except asyncio.CancelledError:
            if self._failure is not None:
                # A background task failed: the server must see a failure, not a shutdown.
                raise self._failure from None
            raise
        finally:
            for task in self._background:
                task.cancel()
            for future in self._confirmations.values():
                future.cancel()

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        """What Channels' `AsyncConsumer.__call__` does, with a cheaper event loop.

        Channels waits for the next event with one new task and one `asyncio.wait`
        per event (`await_many_dispatch`): 9-11 % of runmqtt's busy samples in three
        profiles, at one event per device message and one per broker answer. With
        the server's RECEIVE_NOWAIT, what is already queued is dispatched in a row
        (at most DISPATCH_TURN, then the channel layer gets its turn), and the
        task and the wait are paid once per wake-up instead.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        layer_receive = None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            layer_receive = self.channel_receive
        self.base_send = send
        receive_nowait = (scope.get("extensions") or {}).get(RECEIVE_NOWAIT)
        try:
            await self._dispatch_events(receive, receive_nowait, layer_receive)
        except StopConsumer:
            pass

    async def _dispatch_events(
        self,
        receive: Callable[[], Awaitable[Any]],
        receive_nowait: Callable[[], Any] | None,
        layer_receive: Callable[[], Awaitable[Any]] | None,
    ) -> None:
        server = asyncio.ensure_future(receive())
        layer = asyncio.ensure_future(layer_receive()) if layer_receive is not None else None
        try:
            while True:
                await asyncio.wait((server,) if layer is None else (server, layer), return_when=FIRST_COMPLETED)
                if server.done():
                    await self.dispatch(server.result())
                    if receive_nowait is not None:
                        for _ in range(DISPATCH_TURN):
                            event = receive_nowait()
                            if event is None:
                                break
                            await self.dispatch(event)
                    server = asyncio.ensure_future(receive())
                if layer is not None and layer_receive is not None and layer.done():
                    await self.dispatch(layer.result())
                    layer = asyncio.ensure_future(layer_receive())
        finally:
            for task in (server, layer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # --- events from the server ---------------------------------------------

    async def mqtt_connect(self, event: ConnectEvent) -> None:
        await self.connect(event)

    async def mqtt_message(self, event: MessageEvent) -> None:
        await self.receive(event)
        if self.auto_ack:
            await self.ack(event)

    async def mqtt_disconnect(self, event: DisconnectEvent) -> None:
        await self.disconnect(event)

    async def mqtt_drain(self, event: DrainEvent) -> None:
        # Not awaited here: draining waits on events (`mqtt.published`) that this dispatch
        # must go on delivering.
        self.start_background(self._drain_and_tell(), name="drain")

    async def _drain_and_tell(self) -> None:
        await self.drain()
        await self.send({"type": "mqtt.drained"})

    async def mqtt_published(self, event: PublishedEvent) -> None:
        future = self._confirmations.pop(event["publish_id"], None)
        if future is not None and not future.done():
            future.set_result(event)

    # --- hooks ----------------------------------------------------------------

    async def connect(self, event: ConnectEvent) -> None:
        """Called after every (re)connection to the broker; subscribe here."""

    async def receive(self, message: MessageEvent) -> None:
        """Called for each PUBLISH, in order. Returning means: safe to acknowledge."""

    async def disconnect(self, event: DisconnectEvent) -> None:
        """Called when the broker connection drops; the server is already reconnecting."""

    async def drain(self) -> None:
        """Called once when the server is stopping: return when the work in hand is done
        (events still arrive meanwhile); the instance is cancelled after."""

    # --- replies --------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        event: PublishEvent = {
            "type": "mqtt.publish", "topic": topic, "payload": data, "qos": qos, "retain": retain
        }
        await self.send(event)

    async def publish_confirmed(
        self, topic: str, payload: bytes | str, *, qos: int = 1
    ) -> asyncio.Future[PublishedEvent]:
        """Publish, and return a future for what became of it (`mqtt.published`).

        Resolves when the broker acknowledged or refused it, or when the server lost
        it with its client; while the broker is away it stays pending (paho sends it
        again after reconnecting). Cancelled if this instance ends first.
        """
        publish_id = next(self._publish_ids)
        future: asyncio.Future[PublishedEvent] = asyncio.get_running_loop().create_future()
        self._confirmations[publish_id] = future
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        event: PublishEvent = {
            "type": "mqtt.publish", "topic": topic, "payload": data, "qos": qos, "retain": False,
            "publish_id": publish_id,
        }
        await self.send(event)
        return future

    async def ack(self, message: MessageEvent) -> None:
        """Tell the broker the message is safe; QoS 0 messages need nothing."""
        if message["ack_id"] is not None:
            await self.send({"type": "mqtt.ack", "ack_id": message["ack_id"]})

    async def subscribe(self, topics: list[str], *, qos: int = 1) -> None:
        event: SubscribeEvent = {"type": "mqtt.subscribe", "topics": topics, "qos": qos}
        await self.send(event)

    async def unsubscribe(self, topics: list[str]) -> None:
        event: UnsubscribeEvent = {"type": "mqtt.unsubscribe", "topics": topics}
        await self.send(event)

    # --- background work ------------------------------------------------------

    def start_background(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run `coro` beside the event loop of this instance; cancelled when it ends.

        A background task that fails is logged and ends the instance, so the
        server stops rather than running half-broken.
        """
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        owner = asyncio.current_task()

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            if finished.cancelled() or finished.exception() is None:
                return
            logger.error("%s failed", name, exc_info=finished.exception())
            self._failure = finished.exception()
            if owner is not None:
                owner.cancel()

        task.add_done_callback(done)
