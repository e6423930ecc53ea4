"""`MqttCommunicator`: drive an MQTT application in-process, like Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async

from protocols.mqtt.events import RECEIVE_NOWAIT, MqttScope


class MqttCommunicator(ApplicationCommunicator):
    """Plays the protocol server: connects, delivers PUBLISHes, collects the replies.

    Publishes, subscriptions and acks the application sends are kept apart, so
    a test can wait for the next publish while acks go by. A publish that asks
    for its outcome (`publish_id`) is answered with `mqtt.published` and
    `self.outcome` ("accepted", as from a broker that takes everything); set it
    to None to hold the answers and give them with `answer`.
    """

    def __init__(self, application: Any, *, client_id: str = "test-bridge", protocol: int = 5) -> None:
        scope: MqttScope = {
            "type": "mqtt",
            "asgi": {"version": "3.0"},
            "client_id": client_id,
            "broker": "test",
            "protocol": protocol,
            # As the server does: the consumer dispatches what is queued without awaiting.
            "extensions": {RECEIVE_NOWAIT: self._receive_nowait},
        }
        super().__init__(application, scope)
        self.protocol = protocol
        self._ack_ids = itertools.count(1)
        self.published: list[dict[str, Any]] = []
        self.subscribed: list[str] = []
        self.acked: set[int] = set()
        self.outcome: str | None = "accepted"
        self.drained = False

    def _receive_nowait(self) -> Any:
        try:
            return self.input_queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def connect(self, *, session_present: bool = False, timeout: float = 2) -> list[str]:  # noqa: ASYNC109
        """Send `mqtt.connect`; returns the topic filters the application subscribed to."""
        await self.send_input(
            {"type": "mqtt.connect", "session_present": session_present, "protocol": self.protocol}
        )
        await self._until(lambda: bool(self.subscribed), timeout)
        return list(self.subscribed)

    async def deliver(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
        timeout: float = 5,  # noqa: ASYNC109 - the communicators' API, as in Channels
    ) -> None:
        """Deliver one PUBLISH; for QoS 1/2, wait until the application acknowledges it."""
        ack_id = next(self._ack_ids) if qos else None
        await self.send_input(
            {
                "type": "mqtt.message",
                "topic": topic,
                "payload": payload.encode("utf-8") if isinstance(payload, str) else payload,
                "qos": qos,
                "retain": retain,
                "dup": False,
                "properties": properties or {},
                "ack_id": ack_id,
            }
        )
        if ack_id is not None:
            await self._until(lambda: ack_id in self.acked, timeout)

    async def drain(self, *, timeout: float = 5) -> None:  # noqa: ASYNC109
        """What the server does on SIGTERM: `mqtt.drain`, then wait for `mqtt.drained`."""
        await self.send_input({"type": "mqtt.drain"})
        await self._until(lambda: self.drained, timeout)

    async def disconnect(self, reason: str = "test") -> None:
        await self.send_input({"type": "mqtt.disconnect", "reason": reason})

    async def close(self) -> None:
        """End the application instance (as the server does on shutdown); re-raise its failure."""
        self.future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.future
        # A database call the application was awaiting runs on in its thread after the cancel;
        # this no-op queues behind it there, so the test's database is not flushed under it
        # ("database table is locked").
        await database_sync_to_async(lambda: None)()

    async def receive_publish(self, *, topic: str | None = None, timeout: float = 5) -> dict[str, Any]:  # noqa: ASYNC109
        """The next publish (on `topic`, if given), removed from `published`."""

        def found() -> bool:
            return any(topic is None or e["topic"] == topic for e in self.published)

        await self._until(found, timeout)
        for index, event in enumerate(self.published):
            if topic is None or event["topic"] == topic:
                return self.published.pop(index)
        raise AssertionError("unreachable")

    async def answer(self, publish: dict[str, Any], outcome: str, reason: str = "test") -> None:
        """What the server says once the broker answered `publish` (see PublishedEvent)."""
        await self.send_input(
            {"type": "mqtt.published", "publish_id": publish["publish_id"], "outcome": outcome, "reason": reason}
        )

    async def wait_for(self, condition: Any, *, timeout: float = 5) -> None:  # noqa: ASYNC109
        """Collect what the application sends until `condition()` holds (looked at after each)."""
        await self._until(condition, timeout)

    async def _until(self, condition: Any, timeout: float) -> None:  # noqa: ASYNC109
        while not condition():
            event = await self.receive_output(timeout)
            kind = event["type"]
            if kind == "mqtt.publish":
                self.published.append(event)
                if "publish_id" in event and self.outcome is not None:
                    await self.answer(event, self.outcome)
            elif kind == "mqtt.subscribe":
                self.subscribed.extend(event["topics"])
            elif kind == "mqtt.ack":
                self.acked.add(event["ack_id"])
            elif kind == "mqtt.drained":
                self.drained = True
            elif kind != "mqtt.unsubscribe":
                raise AssertionError(f"unexpected event from the application: {event!r}")
