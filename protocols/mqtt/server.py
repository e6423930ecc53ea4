"""The MQTT protocol server: one broker connection, mapped onto one ASGI application instance.

paho-mqtt's network thread owns the socket (keep-alive, reconnect with
back-off). Its callbacks only hand work over to the asyncio loop (see
`_Handoff`); everything else, the application included, runs on the loop.
Every reply from the application goes through `_send`, the one place that
talks back to paho.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.health import HEALTH
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.events import IncomingEvent, MessageEvent, MqttScope, PublishedEvent
from protocols.mqtt.topics import shorten

logger = logging.getLogger(__name__)

Outcome = Literal["accepted", "refused", "lost"]
Application = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]

# CONNACK codes meaning "this broker does not speak MQTT 5" (v5: 0x84; 3.1.1: 1).
UNSUPPORTED_PROTOCOL = {132, 1}
HEALTH_CHECK = "mqtt_broker"  # in /readyz and bridge_dependency_up
STOPPING_CHECK = "stopping"  # not ready while draining: nothing new should be routed here
# Events the server itself puts on the application's queue from the loop: they take no
# place of the flow control (see `_queue`).
LOOP_EVENTS = frozenset({"mqtt.published", "mqtt.drain"})
RECEIVE_MAXIMUM = 1000
# Events waiting for the application, at most. When the queue is full, paho's network
# thread waits in its callback, so it stops reading the socket and the broker holds what
# it would send (QoS 1/2 queue up for the session; QoS 0 is the broker's to drop): the
# flow control uvicorn does for HTTP, for MQTT. Seconds between checks for a shutdown
# while waiting:
MAX_QUEUED = 1000
SLOT_WAIT = 0.5


class MqttServerError(Exception):
    """The server cannot go on (the application failed or gave an impossible reply)."""


class _Handoff:
    """Calls from paho's thread run on the loop, in order, with one wake-up per burst.

    `call_soon_threadsafe` for each PUBLISH and each PUBACK wrote to the loop's
    self-pipe and woke it once per packet (a tenth of runmqtt under a burst, in a
    profile). Here the thread appends to a deque and schedules a drain only when
    none is pending; the drain runs everything appended until then, including
    what arrives while it runs. Its size is bounded by the server's flow control
    (MAX_QUEUED messages) plus the acknowledgements of at most paho's in-flight
    publishes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._scheduled = False

    def call(self, func: Callable[..., None], *args: Any) -> None:
        """From paho's thread. Appended before the flag is read: if a drain is pending
        (flag set), it has not started popping yet and will run this call."""
        self._calls.append((func, args))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Cleared first: a call appended from now on schedules a drain of its own
        # (at worst an empty one), so none is left waiting.
        self._scheduled = False
        calls = self._calls
        try:
            while calls:
                func, args = calls.popleft()
                func(*args)
        finally:
            # A call that raised is the loop's to log, as with call_soon_threadsafe;
            # the calls behind it still run, in the next drain.
            if calls and not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._drain)


class MqttServer:
    """Connect, run the application instance, reconnect on its own; `run` until cancelled."""

    def __init__(self, application: Application, config: MqttConfig) -> None:
        self.application = application
        self.config = config
        self.connected = asyncio.Event()
        self._protocol = paho.MQTTv311 if config.protocol == "3.1.1" else paho.MQTTv5
        self._generation = 0
        self.received = 0
        self._ack_ids = itertools.count(1)
        # ack_id -> (connection generation, mid, qos): an ack for a message of an
        # earlier connection is dropped; the broker redelivers it on the new one.
        self._unacked: dict[int, tuple[int, int, int]] = {}
        # Bounded by MAX_QUEUED events from paho's thread: see there. Those handed over
        # (`_put`, written by paho's thread only) less those the application took (`_taken`,
        # written by the loop only): a count two threads share without a lock. `_room` wakes
        # paho's thread when it waits for a place. `mqtt.published` events take no place
        # (paho calls on_publish holding a lock that the application's next publish needs:
        # it must never wait); there are at most as many as the publishes with a
        # `publish_id` the application has in flight, its own bound.
        self._queue: asyncio.Queue[IncomingEvent] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._put = 0
        self._taken = 0
        self._room = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: _Handoff | None = None
        self._client: paho.Client | None = None
        self._fallback: asyncio.Task[None] | None = None
        # The broker's Maximum Packet Size (MQTT 5 CONNACK): a larger PUBLISH would make the
        # broker drop the connection, and paho would send it again after every reconnect.
        self._max_packet: int | None = None
        # mid -> (topic, publish_id) of QoS > 0 publishes the broker has not answered yet.
        self._inflight: dict[int, tuple[str, int | None]] = {}
        self.published = 0
        self.refused = 0

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handoff = _Handoff(self._loop)
        scope: MqttScope = {
            "type": "mqtt",
            "asgi": {"version": "3.0"},
            "client_id": self.config.client_id,
            "broker": self.config.broker,
            "protocol": 5 if self._protocol == paho.MQTTv5 else 4,
        }
        app: asyncio.Task[None] = asyncio.create_task(self.application(scope, self._receive, self._send))
        HEALTH.starting(HEALTH_CHECK, "connecting")  # not ready until the broker's CONNACK; not a failure
        self._start_client()
        try:
            await app
        finally:
            app.cancel()
            if self._fallback is not None:
                self._fallback.cancel()
            await self._stop_client()
            HEALTH.forget(HEALTH_CHECK)
            HEALTH.forget(STOPPING_CHECK)
            logger.info("stopped: %s messages received", self.received)
        raise MqttServerError("the MQTT application instance ended")

    async def drain(self, grace: float) -> bool:
        """Before stopping: have the application finish the work in hand (`mqtt.drain`) and
        wait for its `mqtt.drained`, at most `grace` seconds. Then cancel `run`.

        The broker connection stays up meanwhile: the answers to publishes in flight still
        arrive, and the acknowledgements of the last stored batch still leave.
        """
        HEALTH.failing(STOPPING_CHECK, "stopping: finishing the work in hand")
        logger.info("stopping: draining (at most %s s)", grace)
        self._queue.put_nowait({"type": "mqtt.drain"})
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            logger.warning("stopping: not drained after %s s; what is unfinished is done again "
                           "after the restart (unacknowledged, or published again)", grace)
            return False
        logger.info("stopping: drained")
        return True

    def _start_client(self) -> None:
        config = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=self._protocol,
            # Acknowledged by the application after its commit, not on receipt.
            manual_ack=True,
            # Persistent session on 3.1.1 (5 uses clean_start below).
            clean_session=None if self._protocol == paho.MQTTv5 else False,
            reconnect_on_failure=True,
        )
        paho_logger = logging.getLogger("paho")
        if paho_logger.isEnabledFor(logging.DEBUG):
            # Only for debugging: at other levels paho logs a spurious ERROR on every clean
            # shutdown, and everything an operator needs is logged by this server.
            client.enable_logger(paho_logger)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set_context(ssl.create_default_context())
        client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        properties = None
        kwargs: dict[str, Any] = {}
        if self._protocol == paho.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = config.session_expiry
            # Unacknowledged messages the broker may send ahead: room for full write batches.
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs["clean_start"] = False
        client.connect_async(
            config.host, config.port, keepalive=config.keepalive, properties=properties, **kwargs
        )
        HEALTH.starting(HEALTH_CHECK, "connecting")  # ready once subscribed (see _on_subscribe)
        # Set before paho's thread starts: callbacks from any other (replaced) client are ignored.
        self._client = client
        client.loop_start()
        logger.info("connecting to %s as %s", config.broker, config.client_id)

    async def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # What this client still holds goes with it: the application may publish it again.
        for _topic, publish_id in self._inflight.values():
            self._report(publish_id, "lost", "the broker client was replaced before an answer")
        self._inflight.clear()
        client.disconnect()
        # loop_stop joins paho's thread: not on the event loop.
        await asyncio.to_thread(client.loop_stop)

    async def _fall_back_to_311(self) -> None:
        logger.warning("%s does not speak MQTT 5; using MQTT 3.1.1", self.config.broker)
        await self._stop_client()
        self._protocol = paho.MQTTv311
        self._start_client()

    # --- paho's thread: only enqueue --------------------------------------------

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        assert self._handoff is not None
        self._handoff.call(func, *args)

    def _queue_from_thread(self, client: paho.Client, func: Callable[..., None], *args: Any) -> bool:
        """Enqueue an event once the queue has room (waiting here stops paho reading).

        False when `client` was replaced meanwhile (shutdown, fallback): the event is
        dropped, and an unacknowledged message comes again on the next connection.
        """
        while self._put - self._taken >= MAX_QUEUED:
            self._room.clear()
            # Checked again after clearing: a place freed in between set nothing.
            if self._put - self._taken < MAX_QUEUED:
                break
            self._room.wait(SLOT_WAIT)
            if client is not self._client:
                return False
        if client is not self._client:
            return False
        self._put += 1
        self._call(func, *args)
        return True

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            if reason.value in UNSUPPORTED_PROTOCOL and self.config.protocol == "auto" and (
                self._protocol == paho.MQTTv5
            ):
                self._call(self._schedule_fallback)
                return
            logger.error("broker %s refused the connection: %s", self.config.broker, reason)
            HEALTH.failing(HEALTH_CHECK, f"refused: {reason}")
            return
        max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        self._call(self._set_max_packet, max_packet)
        self._generation += 1
        protocol = 5 if self._protocol == paho.MQTTv5 else 4
        logger.info(
            "connected to %s (MQTT %s, session present: %s)",
            self.config.broker, "5" if protocol == 5 else "3.1.1", flags.session_present,
        )
        self._queue_from_thread(
            client,
            self._enqueue,
            {"type": "mqtt.connect", "session_present": bool(flags.session_present), "protocol": protocol},
        )
        self._call(self.connected.set)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if client is not self._client:
            logger.info("disconnected from %s", self.config.broker)
            return
        # From here on, acks for this connection's messages are dropped (the broker sends
        # them again); they must not reach the next connection before its CONNACK.
        self._generation += 1
        logger.warning("disconnected from %s: %s; reconnecting", self.config.broker, reason)
        HEALTH.failing(HEALTH_CHECK, f"disconnected: {reason}")
        self._call(self.connected.clear)
        self._queue_from_thread(client, self._enqueue, {"type": "mqtt.disconnect", "reason": str(reason)})

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.error("the broker refused a subscription (mid %s): %s", mid, ", ".join(refused))
            HEALTH.failing(HEALTH_CHECK, f"subscription refused: {', '.join(refused)}")
        else:
            logger.info("subscribed (mid %s)", mid)
            HEALTH.ok(HEALTH_CHECK)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if client is self._client:
            self._call(self._published, mid, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if client is not self._client:
            return  # unacknowledged: the broker sends it again on the current connection
        props = message.properties
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # Brokers should refuse such topics; if one passes it, the application refuses
            # it (invalid_topic) instead of paho's thread dying on it.
            topic = bytes(message._topic).decode("utf-8", "replace")
        event: MessageEvent = {
            "type": "mqtt.message",
            "topic": topic,
            "payload": bytes(message.payload),
            "qos": message.qos,
            "retain": bool(message.retain),
            "dup": bool(message.dup),
            "properties": props.json() if props is not None and props.names else {},
            "ack_id": None,
        }
        self._queue_from_thread(client, self._enqueue_message, event, self._generation, message.mid)

    # --- the loop's side ------------------------------------------------------------

    def _schedule_fallback(self) -> None:
        if self._fallback is None:
            self._fallback = asyncio.create_task(self._fall_back_to_311())

    async def _receive(self) -> IncomingEvent:
        """The application's `receive`: the next event, freeing its place for paho's thread."""
        event = await self._queue.get()
        if event["type"] not in LOOP_EVENTS:
            self._taken += 1
            if not self._room.is_set():
                self._room.set()  # paho's thread may be waiting for this place
        return event

    def _set_max_packet(self, size: int | None) -> None:
        self._max_packet = size

    def _published(self, mid: int, reason: ReasonCode) -> None:
        topic, publish_id = self._inflight.pop(mid, ("?", None))
        if reason.is_failure:
            # Refused for good (not authorized, quota, payload format): paho does not resend it.
            self.refused += 1
            logger.error("the broker refused a publish on %s: %s; dropped", shorten(topic), reason)
            self._report(publish_id, "refused", str(reason))
        else:
            self.published += 1
            self._report(publish_id, "accepted", str(reason))

    def _report(self, publish_id: int | None, outcome: Outcome, reason: str) -> None:
        """Tell the application what became of a publish it gave an id (see PublishedEvent)."""
        if publish_id is not None:
            event: PublishedEvent = {
                "type": "mqtt.published", "publish_id": publish_id,
                "outcome": outcome, "reason": reason,
            }
            self._queue.put_nowait(event)

    def _enqueue(self, event: IncomingEvent) -> None:
        self._queue.put_nowait(event)

    def _enqueue_message(self, event: MessageEvent, generation: int, mid: int) -> None:
        self.received += 1
        if event["qos"] > 0:
            ack_id = next(self._ack_ids)
            self._unacked[ack_id] = (generation, mid, event["qos"])
            event["ack_id"] = ack_id
        self._queue.put_nowait(event)

    async def _send(self, event: dict[str, Any]) -> None:
        """Every reply of the application: checked here, then handed to paho."""
        client = self._client
        kind = event.get("type")
        if kind == "mqtt.drained":
            self._drained.set()
            return
        if kind == "mqtt.ack":
            generation, mid, qos = self._unacked.pop(event["ack_id"])
            if client is not None and generation == self._generation:
                client.ack(mid, qos)
            return
        if client is None:
            logger.warning("dropping %s: the broker client is being replaced", kind)
            if kind == "mqtt.publish":
                self._report(event.get("publish_id"), "lost", "no broker client")
            return
        if kind == "mqtt.publish":
            self._publish(client, event)
        elif kind == "mqtt.subscribe":
            rc, _ = client.subscribe([(topic, event["qos"]) for topic in event["topics"]])
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                logger.info("not connected; subscriptions are made again on connect")
        elif kind == "mqtt.unsubscribe":
            client.unsubscribe(event["topics"])
        else:
            raise MqttServerError(f"the application sent an unknown event type {kind!r}")

    def _publish(self, client: paho.Client, event: dict[str, Any]) -> None:
        """Hand one PUBLISH to paho, or drop it (logged) when no retry could ever deliver it."""
        topic, payload, qos = event["topic"], event["payload"], event["qos"]
        publish_id = event.get("publish_id")
        size = _packet_size(topic, payload, qos)
        if self._max_packet is not None and size > self._max_packet:
            self.refused += 1
            logger.error("dropping a publish on %s: %s bytes, over the broker's maximum packet "
                         "size of %s", shorten(topic), size, self._max_packet)
            self._report(publish_id, "refused", f"{size} bytes, over the maximum packet size")
            return
        try:
            info = client.publish(topic, payload, qos=qos, retain=event.get("retain", False))
        except ValueError as exc:  # paho's own refusals: an invalid topic, a payload too large
            self.refused += 1
            logger.error("dropping a publish on %s: %s", shorten(topic), exc)
            self._report(publish_id, "refused", str(exc))
            return
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # paho's queue is full: try again later
            logger.warning("not publishing on %s now: %s", shorten(topic), paho.error_string(info.rc))
            self._report(publish_id, "lost", paho.error_string(info.rc))
            return
        # Not connected: paho keeps QoS 1/2 messages and sends them after reconnecting.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.refused += 1
            logger.error("dropping a publish on %s: %s", shorten(topic), paho.error_string(info.rc))
            self._report(publish_id, "refused", paho.error_string(info.rc))
            return
        if qos > 0:
            self._inflight[info.mid] = (topic, publish_id)
        elif info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report(publish_id, "accepted", "QoS 0: handed to the client")
        else:  # QoS 0 while not connected: paho drops it
            self._report(publish_id, "lost", paho.error_string(info.rc))


def _packet_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of the PUBLISH packet: fixed header, topic, packet id, properties, payload."""
    body = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + 1 + len(payload)
    return 1 + (1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4) + body

