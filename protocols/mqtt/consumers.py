"""The bridge's MQTT consumer: devices in, room messages and commands out."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, OperationalError
from django.utils import timezone

from bridge import instruments, layer, writelock
from bridge.exceptions import BridgeError
from bridge.health import HEALTH
from bridge.layer import LayerMember
from bridge.names import room_group
from bridge.probes import DATABASE
from bridge.services.devices import DEVICE_COMMANDS_GROUP
from bridge.services.messages import messages_fanout
from bridge.services.telemetry import atelemetry_wake
from bridge.supervisor import Supervisor
from protocols.mqtt import outbound
from protocols.mqtt.admission import Admission, Dropped
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.delivery import RoomDelivery
from protocols.mqtt.events import ConnectEvent, DisconnectEvent, MessageEvent
from protocols.mqtt.ingest import Outcome, ingest_batch
from protocols.mqtt.topics import Topics, shorten

logger = logging.getLogger(__name__)

# Messages stored per transaction, at most. A batch has a fixed cost (device and room
# lookups, the room lock, the key lookup, the stats task, the commit, one fan-out per
# room: about 10 ms on the busy 2-core VM) that 500 messages share better than 200;
# the broker keeps up to RECEIVE_MAXIMUM (1000) unacknowledged, so the next batch
# arrives while one is stored.
BATCH = 500
# Messages received and not yet taken by the writer, at most (see `receive`).
MAX_INBOX = 1000
# Events whose handlers never touch the database: once per device message, per publish
# confirmed, per batch stored anywhere (see `dispatch`).
NO_DATABASE = frozenset({"mqtt.message", "mqtt.published", "room.message", "room.messages", "room.presence"})
# Pauses before a batch that hit a transient database failure is tried again.
RETRY_MIN, RETRY_MAX = 0.1, 5.0


class BridgeConsumer(LayerMember, MqttConsumer):
    """Stores what devices send, publishes every room message and every device command.

    The writer and the publisher run under a `Supervisor` ("mqtt"): a failure
    is logged, reported in /readyz and the loop restarted, never the end of the
    process. The channel layer is best effort (wake-ups); the database is the
    truth, and the publisher's sweep and `layer_recovered_hook` catch up.
    """

    auto_ack = False
    topics: Topics
    _inbox: list[MessageEvent]
    _inbox_ready: asyncio.Event
    _inbox_room: asyncio.Event
    admission: Admission
    _online: asyncio.Event
    _rooms: set[str]
    _dirty: set[str]
    _wake: asyncio.Event
    _commands_due: bool
    rooms_out: RoomDelivery

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started_up = False
        self._rooms, self._dirty, self._wake = set(), set(), asyncio.Event()
        self._inbox, self._inbox_ready, self._inbox_room = [], asyncio.Event(), asyncio.Event()
        self._inbox_since = 0.0  # loop time when the oldest message in the inbox arrived
        self._single_writer_database = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
        # Seconds the writer and the publisher wait for more of a burst (see MQTT_LINGER_MS).
        self._linger = settings.MQTT_LINGER_MS / 1000
        self._online = asyncio.Event()
        self._commands_due = True
        self._started = timezone.now()
        self._retry_pause = RETRY_MIN
        self.supervisor = Supervisor("mqtt", backoff_max=5.0)
        self._batch: list[MessageEvent] = []  # taken from the inbox, not yet acknowledged
        # Stopping (SIGTERM, see `drain`): the loops finish what they hold and take nothing new.
        self._draining = False
        self._writer_idle, self._publisher_idle = asyncio.Event(), asyncio.Event()
        self._writer_idle.set()
        self._publisher_idle.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.supervisor.stop()

    async def connect(self, event: ConnectEvent) -> None:
        if not self._started_up:
            self._started_up = True
            self.topics = Topics(
                prefix=settings.MQTT_TOPIC_PREFIX,
                shared_group=settings.MQTT_SHARED_GROUP if event["protocol"] == 5 else "",
            )
            self.admission = Admission(self.topics)
            self.rooms_out = RoomDelivery(
                owner=self.scope["client_id"], topics=self.topics, lease=settings.MQTT_PUBLISH_LEASE,
                publish=lambda topic, payload: self.publish_confirmed(topic, payload, qos=settings.MQTT_QOS),
                # Without broker-enforced permissions any device could read a private room's
                # topic: its messages stay off MQTT (history has them; commands still go out).
                publish_private=settings.MQTT_DYNSEC,
            )
            await self.join(DEVICE_COMMANDS_GROUP)
            # Cursors exist before the first device message is stored (see rooms_track).
            try:
                await self._track_rooms()
            except DatabaseError as exc:
                HEALTH.failing(DATABASE, exc)  # the publisher's sweep tracks them once it answers
            self.supervisor.run("writer", self._writer, critical=True)
            self.supervisor.run("publisher", self._publisher, critical=True)
        await self.subscribe(self.topics.inbound_filters(), qos=1)
        self._online.set()
        # Publish what piled up while we were away, and what a dead holder of a room's lease
        # (this client id before a restart) left unconfirmed: every room, not the next sweep.
        self._dirty |= self._rooms
        self._wake.set()

    async def disconnect(self, event: DisconnectEvent) -> None:
        # Claim nothing while offline: a process that is connected publishes it instead.
        self._online.clear()

    async def drain(self) -> None:
        """The server is stopping: the batch being stored is committed and acknowledged, the
        room being published waits for the broker's answers and moves its cursor; nothing
        new is taken. What waits in the inbox is not acknowledged: the broker sends it again
        (to another runmqtt sharing the subscription, or to this one after its restart)."""
        self._draining = True
        self._inbox_room.set()  # a receive waiting for room lets its message go
        self._inbox_ready.set()
        self._wake.set()
        await self._writer_idle.wait()
        await self._publisher_idle.wait()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes stale database connections before every handler, a thread hop
        each (7 % of runmqtt under a burst, in a profile; still 9 % in the end_to_end
        scenario with only device messages skipping it). The handlers of NO_DATABASE only
        queue, set a flag or resolve a future; the writer's and the publisher's database
        calls close stale connections themselves, so these events skip it."""
        handler = getattr(self, get_handler_name(message), None) if message["type"] in NO_DATABASE else None
        if handler is not None:
            await handler(message)
            return
        await super().dispatch(message)

    # --- devices in -----------------------------------------------------------

    async def receive(self, message: MessageEvent) -> None:
        """Queue it for the writer; it is acknowledged after the writer's commit.

        The inbox holds at most MAX_INBOX messages: when it is full this waits, so
        the server's queue stops draining and the server stops reading the socket
        (flow control back to the broker, see protocols/mqtt/server.py).
        """
        shed, error = self.admission.shed(message)
        if shed:  # its device has no token left: acknowledged and dropped on arrival
            await self.ack(message)
            if error is not None:
                await self._refuse(message["topic"], error.error)
            return
        while len(self._inbox) >= MAX_INBOX and not self._draining:
            self._inbox_room.clear()
            await self._inbox_room.wait()
        if self._draining:
            return  # not acknowledged: it comes again
        if not self._inbox:
            self._inbox_since = asyncio.get_running_loop().time()
        self._inbox.append(message)
        self._inbox_ready.set()

    async def _writer(self) -> None:
        """Store what arrived, in arrival order, a batch per transaction; then ack and tell.

        The batch in hand is kept on the instance until it is acknowledged: a
        rolled-back batch, or a writer restarted by the supervisor, starts again
        from the same messages.
        """
        while True:
            if not self._batch:
                self._writer_idle.set()
                self._batch = await self._next_batch()
                if not self._batch:
                    continue
                self._writer_idle.clear()
            batch = self._batch
            outcomes = await self._store(batch)
            if outcomes is None:
                continue  # rolled back, nothing acknowledged: the same batch again
            self._batch = []
            # The batch's messages in one group message per room, not one per message: the
            # rooms' sockets first (they wait for it), then the broker's acknowledgements.
            stored = [(o.envelope, o.json) for o in outcomes if o.envelope is not None]
            await messages_fanout([envelope for envelope, _ in stored], [text for _, text in stored])
            for message in batch:
                await self.ack(message)
            for outcome in outcomes:
                await self._tell(outcome)
            if any(outcome.telemetry or outcome.status for outcome in outcomes):
                await atelemetry_wake(status=any(outcome.status for outcome in outcomes))

    async def _next_batch(self) -> list[MessageEvent]:
        """Up to BATCH messages from the inbox, less those of devices over their rate.

        Those are acknowledged and dropped here, before the database, and their
        device is told once per batch on devices/<device>/errors.
        """
        await self._inbox_ready.wait()
        if len(self._inbox) < BATCH:
            # Let a burst gather (one commit for many), counted from the oldest message's
            # arrival: what waited through the last batch's store goes without a pause (tried
            # on SQLite, one runmqtt, 2,500 msg/s steady: p50 44 -> 36 ms). Not on SQLite,
            # though: writers in other processes wait for its lock by sleeping in growing steps
            # (up to 100 ms), and commits back to back starved them (two runmqtt sharing the
            # subscription: 4,100 -> 1,900 msg/s). There the pause is the other's turn.
            pause = self._linger
            if not self._single_writer_database:
                pause = self._inbox_since + self._linger - asyncio.get_running_loop().time()
            if pause > 0:
                await asyncio.sleep(pause)
        if self._draining:
            await _parked()
        batch, self._inbox = self._inbox[:BATCH], self._inbox[BATCH:]
        if not self._inbox:
            self._inbox_ready.clear()
        else:
            self._inbox_since = asyncio.get_running_loop().time()  # not the oldest's, but close
        self._inbox_room.set()
        admitted, dropped = await self.admission.split(batch)
        for refused in dropped:
            for message in refused.messages:
                await self.ack(message)
            await self._refuse(refused.messages[0]["topic"], refused.error)
        if dropped:
            await self._shed_backlog()
        return admitted

    async def _shed_backlog(self) -> None:
        """A device just ran out of tokens: what it sent that is still waiting goes now,
        not in its turn, so the other devices' messages behind it are not held up."""
        kept: list[MessageEvent] = []
        shed: list[tuple[MessageEvent, Dropped | None]] = []
        for message in self._inbox:  # no await in this loop: receive() appends meanwhile
            drop, error = self.admission.shed(message)
            if drop:
                shed.append((message, error))
            else:
                kept.append(message)
        self._inbox = kept
        if not kept:
            self._inbox_ready.clear()
        self._inbox_room.set()
        for message, error in shed:
            await self.ack(message)
            if error is not None:
                await self._refuse(message["topic"], error.error)

    async def _store(self, batch: list[MessageEvent]) -> list[Outcome] | None:
        """One transaction for the batch; None when it should simply be tried again.

        A transient database failure (a deadlock, a lock timeout, a lost
        connection) rolls back and retries after a pause. Any other failure is
        a message the code cannot handle: the batch is retried one message at a
        time, and the one that still fails is refused (and acknowledged, so it
        cannot stop every runmqtt in turn as the broker redelivers it).
        """
        pairs = [(m["topic"], m["payload"]) for m in batch]
        try:
            outcomes: list[Outcome] = await database_sync_to_async(self._ingest)(pairs)
            self._retry_pause = RETRY_MIN
            HEALTH.ok(DATABASE)
            return outcomes
        except OperationalError as exc:
            HEALTH.failing(DATABASE, exc)
            logger.log(logging.WARNING if self._retry_pause == RETRY_MIN else logging.DEBUG,
                       "batch of %d rolled back (%s); retrying in %.1f s",
                       len(batch), exc, self._retry_pause)
            await asyncio.sleep(self._retry_pause)
            self._retry_pause = min(self._retry_pause * 2, RETRY_MAX)
            return None
        except Exception:
            if len(batch) > 1:
                logger.exception("a batch of %d failed; storing its messages one by one", len(batch))
                outcomes = []
                for message in batch:
                    one = await self._store([message])
                    if one is None:
                        return None
                    outcomes.extend(one)
                return outcomes
            logger.exception("refusing a message the bridge could not handle, on %s", pairs[0][0])
            return [Outcome(topic=pairs[0][0], error=BridgeError(
                "The bridge could not handle this message.", code="internal_error"))]

    def _ingest(self, pairs: list[tuple[str, bytes]]) -> list[Outcome]:
        """In the database thread: store, then (committed) let the publisher know what, before
        its next claim, which waits behind this in the same thread."""
        with writelock.held():
            outcomes = ingest_batch(topics=self.topics, messages=pairs)
        stored = []
        for outcome in outcomes:
            if outcome.envelope is not None:
                outcome.json = json.dumps(outcome.envelope)
                if outcome.room_id is not None:
                    stored.append((outcome.room_id, outcome.envelope, outcome.json))
        self.rooms_out.stored(stored)
        return outcomes

    async def _tell(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            await self._refuse(outcome.topic, outcome.error)
        if outcome.presence is not None:
            rooms, who, state = outcome.presence
            for slug in rooms:
                await layer.group_send(
                    room_group(slug),
                    {"type": "room.presence", "who": who, "state": state, "origin": "mqtt", "room": slug},
                )

    async def _refuse(self, topic: str, exc: BridgeError) -> None:
        instruments.refused("mqtt", exc.code)
        device = self.topics.device_of(topic)
        logger.warning("refused %s from %s: %s %s", shorten(topic), device or "?", exc.code,
                       shorten(exc.detail), extra={"sender": f"device:{device}" if device else None})
        if device is not None:
            body = {"code": exc.code, "detail": shorten(exc.detail), "topic": shorten(topic)}
            await self.publish(self.topics.errors(device), json.dumps(body), qos=settings.MQTT_QOS)

    # --- room messages and commands out -------------------------------------------

    async def room_message(self, event: dict[str, Any]) -> None:
        """A message was stored in a room: wake the publisher (several may coalesce)."""
        self._dirty.add(event["message"]["room"])
        self._wake.set()

    async def room_messages(self, event: dict[str, Any]) -> None:
        """Several messages were stored in a room (a batch): the same wake-up."""
        self._dirty.add(event["room"])
        self._wake.set()

    async def room_presence(self, event: dict[str, Any]) -> None:
        """Presence is not part of the MQTT topics (devices have their own status)."""

    async def devices_command(self, event: dict[str, Any]) -> None:
        """The API recorded a command for a device."""
        self._commands_due = True
        self._wake.set()

    async def _publisher(self) -> None:
        """Publish what is claimed, on wake-ups; every MQTT_SWEEP_INTERVAL, look at every room.

        The sweep heals lost wake-ups (another process stored, the channel layer
        dropped the event) and finds rooms created since the last one.
        """
        while True:
            self._publisher_idle.set()
            sweep = False
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=settings.MQTT_SWEEP_INTERVAL)
            except TimeoutError:
                sweep = True
            await asyncio.sleep(self._linger)  # let wake-ups coalesce: one claim for many messages
            await self._online.wait()
            if self._draining:
                await _parked()
            self._publisher_idle.clear()
            self._wake.clear()
            try:
                if sweep:
                    await self._track_rooms()
                    self._dirty |= self._rooms
                    self._commands_due = True
                await self._publish_due()
            except DatabaseError as exc:
                # A claim commits whole or not at all: the next wake-up or sweep tries again.
                HEALTH.failing(DATABASE, exc)
                logger.info("could not claim messages to publish (%s); retrying at the next sweep",
                            exc)

    async def _publish_due(self) -> None:
        while self._dirty and not self._draining:
            slug = self._dirty.pop()
            delivered = await self.rooms_out.deliver(slug)
            if delivered.commands:
                await self._publish_commands(delivered.commands)
            if delivered.more:
                self._dirty.add(slug)
        if self._commands_due and not self._draining:
            self._commands_due = False
            await self._publish_commands(await database_sync_to_async(outbound.commands_claim)())

    async def _publish_commands(self, commands: list[outbound.CommandOut]) -> None:
        for command in commands:
            await self.publish(
                self.topics.commands(command.device_id),
                json.dumps(command.payload),
                qos=settings.MQTT_QOS,
            )
            logger.info("command %s published to %s", command.id, command.device_id)

    async def _track_rooms(self) -> None:
        slugs = await database_sync_to_async(outbound.rooms_track)(
            known=self._rooms, started=self._started
        )
        for slug in set(slugs) - self._rooms:
            await self.join(room_group(slug))
        self._rooms.update(slugs)

    async def layer_recovered_hook(self) -> None:
        """Wake-ups sent while the layer was away are lost: look at every room now."""
        self._dirty |= self._rooms
        self._commands_due = True
        self._wake.set()


async def _parked() -> None:
    """Wait until cancelled: a loop of a draining consumer takes no new work."""
    await asyncio.Event().wait()
