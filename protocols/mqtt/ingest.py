"""What devices send, decoded and handed to the services: a batch in one transaction.

One database round trip (and one commit) for many messages is what lets one
runmqtt keep up: per-message transactions spent most of their time opening
connections and committing. Each service call is atomic on its own (a
savepoint inside the batch), so a refused message leaves the others alone; the
batch is acknowledged only after the commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from bridge import jsontext
from bridge.envelope import Envelope, Sender
from bridge.exceptions import BridgeError, InvalidInput, TooLarge
from bridge.models import Device, Room
from bridge.services.devices import (
    device_for_message,
    device_posts_allowed,
    device_room_for_post,
    device_status_set,
    devices_for_messages,
    telemetry_store_many,
)
from bridge.services.messages import NewMessage, message_store_many
from protocols.mqtt.topics import Topics

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one message led to, for the consumer to tell the world after the commit."""

    topic: str
    envelope: Envelope | None = None
    room_id: int | None = None  # the envelope's room
    # The envelope as JSON, encoded once (by the consumer, after the commit): the room's
    # sockets and its MQTT topic are sent these same bytes.
    json: str | None = None
    # (room slugs, who, state) when a status changed someone's presence.
    presence: tuple[list[str], Sender, str] | None = None
    error: BridgeError | None = None
    # A reading was stored: the telemetry workers have work.
    telemetry: bool = False
    # A status was recorded: `silent` rules are judged again at once (Last Will offline).
    status: bool = False


def decode_text(payload: bytes) -> str:
    if len(payload) > settings.MQTT_MAX_PAYLOAD:
        raise TooLarge(f"Payloads are limited to {settings.MQTT_MAX_PAYLOAD} bytes.")
    return jsontext.decode_utf8(payload, what="The payload")


def decode_json(text: str) -> Any:
    return jsontext.loads(text, what="The payload")


class _Lookups:
    """Devices and their rooms, looked up once per batch (a batch is mostly a few devices).

    `prefetch` answers the common case (known, enabled devices posting where they may)
    for the whole batch in one query, and the devices of readings and statuses in
    another; anything else takes the one-by-one path, which registers, refuses or
    explains.
    """

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.rooms: dict[tuple[str, str], Room] = {}

    def prefetch(self, topics: Topics, messages: list[tuple[str, bytes]]) -> None:
        pairs: set[tuple[str, str]] = set()
        others: set[str] = set()
        for topic, _ in messages:
            try:
                kind, device_id, room = topics.parse(topic)
            except BridgeError:
                continue  # refused in its turn
            if kind == "post" and room is not None:
                pairs.add((device_id, room))
            elif kind != "bridge":
                others.add(device_id)
        for (device_id, room), (device, room_obj) in device_posts_allowed(pairs=pairs).items():
            self.devices[device_id] = device
            self.rooms[(device_id, room)] = room_obj
        # Readings and statuses get the whole device row, as do posts whose device was
        # not found above (the one-by-one path decides about their rooms).
        wanted = others | {device_id for device_id, _ in pairs if device_id not in self.devices}
        if wanted:
            self.devices.update(devices_for_messages(device_ids=wanted))

    def device(self, device_id: str) -> Device:
        if device_id not in self.devices:
            self.devices[device_id] = device_for_message(device_id=device_id)
        return self.devices[device_id]

    def room(self, device: Device, room: str) -> Room:
        key = (device.device_id, room)
        if key not in self.rooms:
            self.rooms[key] = device_room_for_post(device=device, room=room)
        return self.rooms[key]


def ingest_batch(*, topics: Topics, messages: list[tuple[str, bytes]]) -> list[Outcome]:
    """Handle (topic, payload) pairs in one transaction; one Outcome each, in order.

    Chat posts are gathered per room and stored with one `message_store_many`
    call each (one lock, one key lookup, one insert): per room, in the order
    they arrived, so `seq` follows the devices' order. Readings are stored with
    one `telemetry_store_many` (one key lookup, one insert).
    """
    outcomes = [Outcome(topic=topic) for topic, _ in messages]
    lookups = _Lookups()
    lookups.prefetch(topics, messages)
    posts: dict[int, list[tuple[Outcome, NewMessage]]] = {}
    rooms: dict[int, Room] = {}
    readings: list[tuple[Outcome, Device, object]] = []
    with transaction.atomic():
        for outcome, (topic, payload) in zip(outcomes, messages, strict=True):
            try:
                # No savepoint of our own: each service call is atomic (a savepoint
                # here), and a refusal leaves nothing half-written that matters.
                post = _ingest_one(topics, lookups, topic, payload, outcome)
            except BridgeError as exc:
                outcome.error = exc
                continue
            if isinstance(post, _Reading):
                readings.append((outcome, post.device, post.data))
            elif post is not None:
                room, message = post
                rooms[room.pk] = room
                posts.setdefault(room.pk, []).append((outcome, message))
        if readings:
            stored = telemetry_store_many(readings=[(d, data) for _, d, data in readings])
            for (outcome, _, _), new in zip(readings, stored, strict=True):
                if isinstance(new, BridgeError):
                    outcome.error = new
                else:
                    outcome.telemetry = new
        # Rooms locked in one order (pk) by every process: two runmqtt on PostgreSQL
        # with batches touching the same rooms cannot deadlock on them.
        for room_pk, items in sorted(posts.items()):
            results = message_store_many(room=rooms[room_pk], messages=[m for _, m in items])
            for (outcome, _), result in zip(items, results, strict=True):
                if isinstance(result, BridgeError):
                    outcome.error = result
                else:
                    outcome.envelope, outcome.room_id = result.envelope, room_pk
    return outcomes


@dataclass(frozen=True)
class _Reading:
    device: Device
    data: object


def _ingest_one(
    topics: Topics, lookups: _Lookups, topic: str, payload: bytes, outcome: Outcome
) -> tuple[Room, NewMessage] | _Reading | None:
    """Status is handled here; a chat post or a reading is returned to be stored in bulk."""
    kind, device_id, room = topics.parse(topic)
    if kind == "bridge":
        return None  # our own commands/errors, seen through devices/#
    text = decode_text(payload)
    device = lookups.device(device_id)
    if kind == "post":
        assert room is not None
        return lookups.room(device, room), _post(device, text)
    if kind == "telemetry":
        return _Reading(device, decode_json(text))
    else:
        status = text.strip()
        rooms = device_status_set(device=device, status=status)
        outcome.status = True  # an offline device may raise a `silent` alert
        if rooms:
            who: Sender = {"kind": device.identity.kind, "name": device.identity.name}
            outcome.presence = ([r.slug for r in rooms], who, status)
    return None


def _post(device: Device, text: str) -> NewMessage:
    """UTF-8 text, or JSON `{"text", "id", "data"}`: the same `id` again stores nothing new."""
    client_key, data = None, None
    if text.lstrip().startswith("{"):
        body = decode_json(text)
        if not isinstance(body, dict):
            raise InvalidInput("A JSON message is an object.", code="invalid_json")
        text, data, client_key = body.get("text", ""), body.get("data"), body.get("id")
        if isinstance(client_key, int) and not isinstance(client_key, bool):
            client_key = str(client_key)
    return NewMessage(
        sender=device.identity, origin="mqtt", text=text, data=data, client_key=client_key
    )
