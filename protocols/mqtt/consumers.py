"""The bridge's MQTT consumer: devices in, room messages and commands out."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from bridge.exceptions import BridgeError, InvalidInput, TooLarge
from bridge.names import room_group
from bridge.services.devices import (
    DEVICE_COMMANDS_GROUP,
    device_for_message,
    device_room_for_post,
    device_status_set,
    telemetry_store,
)
from bridge.services.messages import PostResult, message_fanout, message_store
from protocols.mqtt import outbound
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.events import ConnectEvent, MessageEvent
from protocols.mqtt.topics import Topics

logger = logging.getLogger(__name__)



def decode_text(payload: bytes) -> str:
    if len(payload) > settings.MQTT_MAX_PAYLOAD:
        raise TooLarge(f"Payloads are limited to {settings.MQTT_MAX_PAYLOAD} bytes.")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"The payload is not UTF-8: {exc}", code="invalid_utf8") from exc


def decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"Malformed JSON: {exc}", code="invalid_json") from exc


def store_post(*, device_id: str, room: str, text: str) -> PostResult:
    """A device's chat message, stored once: one database round trip per message.

    UTF-8 text, or JSON `{"text", "id", "data"}` where `id` makes redeliveries
    store nothing new.
    """
    client_key, data = None, None
    if text.lstrip().startswith("{"):
        body = decode_json(text)
        if not isinstance(body, dict):
            raise InvalidInput("A JSON message is an object.", code="invalid_json")
        text, data, client_key = body.get("text", ""), body.get("data"), body.get("id")
        if isinstance(client_key, int) and not isinstance(client_key, bool):
            client_key = str(client_key)
    device = device_for_message(device_id=device_id)
    room_obj = device_room_for_post(device=device, room=room)
    return message_store(
        room=room_obj,
        sender=device.identity,
        origin="mqtt",
        text=text,
        data=data,
        client_key=client_key,
    )


class BridgeConsumer(MqttConsumer):
    """Stores what devices send, publishes every room message and every device command."""

    topics: Topics
    _rooms: set[str]
    _dirty: set[str]
    _wake: asyncio.Event
    _commands_due: bool

    async def connect(self, event: ConnectEvent) -> None:
        if not hasattr(self, "topics"):
            self.topics = Topics(
                prefix=settings.MQTT_TOPIC_PREFIX,
                shared_group=settings.MQTT_SHARED_GROUP if event["protocol"] == 5 else "",
            )
            self._rooms, self._dirty, self._wake = set(), set(), asyncio.Event()
            self._commands_due = True
            self._started = timezone.now()
            await self.channel_layer.group_add(DEVICE_COMMANDS_GROUP, self.channel_name)
            # Cursors exist before the first device message is stored (see rooms_track).
            await self._track_rooms()
            self.start_background(self._publisher(), name="mqtt publisher")
        await self.subscribe(self.topics.inbound_filters(), qos=1)
        self._wake.set()  # publish what piled up while we were away

    # --- devices in -----------------------------------------------------------

    async def receive(self, message: MessageEvent) -> None:
        topic = message["topic"]
        try:
            kind, device_id, room = self.topics.parse(topic)
            if kind == "bridge":
                return  # our own commands/errors, seen through devices/#
            text = decode_text(message["payload"])
            if kind == "post":
                assert room is not None
                result = await database_sync_to_async(store_post)(
                    device_id=device_id, room=room, text=text
                )
                await message_fanout(result.envelope)
                return
            device = await database_sync_to_async(device_for_message)(device_id=device_id)
            if kind == "telemetry":
                await database_sync_to_async(telemetry_store)(device=device, data=decode_json(text))
            else:
                await self._status(device, text.strip())
        except BridgeError as exc:
            await self._refuse(topic, exc)

    async def _status(self, device: Any, status: str) -> None:
        rooms = await database_sync_to_async(device_status_set)(device=device, status=status)
        for room in rooms:
            await self.channel_layer.group_send(
                room_group(room.slug),
                {
                    "type": "room.presence",
                    "who": device.identity.as_sender(),
                    "state": status,
                    "origin": "mqtt",
                },
            )

    async def _refuse(self, topic: str, exc: BridgeError) -> None:
        device = self.topics.device_of(topic)
        logger.warning("refused %s from %s: %s %s", topic, device or "?", exc.code, exc.detail)
        if device is not None:
            body = {"code": exc.code, "detail": exc.detail, "topic": topic}
            await self.publish(self.topics.errors(device), json.dumps(body), qos=settings.MQTT_QOS)

    # --- room messages and commands out -------------------------------------------

    async def room_message(self, event: dict[str, Any]) -> None:
        """A message was stored in a room: wake the publisher (several may coalesce)."""
        self._dirty.add(event["message"]["room"])
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
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=settings.MQTT_SWEEP_INTERVAL)
            except TimeoutError:
                await self._track_rooms()
                self._dirty |= self._rooms
                self._commands_due = True
            self._wake.clear()
            try:
                await self._publish_due()
            except DatabaseError:
                # The next wake-up or sweep tries again; nothing was claimed.
                logger.exception("could not claim messages to publish; retrying at the next sweep")

    async def _publish_due(self) -> None:
        while self._dirty:
            slug = self._dirty.pop()
            claimed = await database_sync_to_async(outbound.room_claim)(slug=slug)
            for envelope in claimed.envelopes:
                await self.publish(
                    self.topics.room_messages(slug), json.dumps(envelope), qos=settings.MQTT_QOS
                )
            if claimed.commands:
                await self._publish_commands(claimed.commands)
            if claimed.more:
                self._dirty.add(slug)
        if self._commands_due:
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
            await self.channel_layer.group_add(room_group(slug), self.channel_name)
        self._rooms.update(slugs)
