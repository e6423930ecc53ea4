"""Devices: provisioning, what they may do, their status, telemetry and commands sent to them."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from bridge import jsontext, layer, sql
from bridge.exceptions import BridgeError, Forbidden, InvalidInput, NotFound, TooLarge
from bridge.metrics import flatten
from bridge.models import Device, DeviceCommand, Identity, Message, Room, Telemetry
from bridge.names import DEVICE_ID_RULE, is_device_id, is_room_slug
from bridge.selectors import room_get
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import MAX_CLIENT_KEY, MAX_DATA_BYTES
from bridge.services.presence import presence_join, presence_leave

logger = logging.getLogger(__name__)

STATUSES = ("online", "offline")
# The channel-layer group of every process that publishes device commands (runmqtt).
DEVICE_COMMANDS_GROUP = "device-commands"


def _checked_device_id(device_id: str) -> str:
    if not is_device_id(device_id):
        raise InvalidInput(
            f"{device_id!r} is not a device id: {DEVICE_ID_RULE}.",
            code="invalid_device",
        )
    return device_id


def device_register(
    *,
    device_id: str,
    post_rooms: Iterable[str | Room] = (),
    listen_rooms: Iterable[str | Room] | None = None,
) -> Device:
    """Create a device or add rooms to it (idempotent). Listen rooms default to the post rooms."""
    _checked_device_id(device_id)
    posts = [r if isinstance(r, Room) else room_get(slug=r) for r in post_rooms]
    listens = posts if listen_rooms is None else [
        r if isinstance(r, Room) else room_get(slug=r) for r in listen_rooms
    ]
    with transaction.atomic():
        identity = identity_get_or_create(kind=Identity.Kind.DEVICE, name=device_id)
        device, _ = Device.objects.get_or_create(device_id=device_id, defaults={"identity": identity})
        device.post_rooms.add(*posts)
        device.listen_rooms.add(*listens)
    return device


def device_set_enabled(*, device_id: str, enabled: bool) -> Device:
    """Enable or disable a device; a disabled one is refused everywhere, its broker client too."""
    device = Device.objects.filter(device_id=_checked_device_id(device_id)).first()
    if device is None:
        raise NotFound(f"Unknown device {device_id!r}.", code="unknown_device")
    if device.enabled != enabled:
        device.enabled = enabled
        device.save(update_fields=["enabled"])  # announced (bridge.signals): the broker follows
    return device


def device_remove(*, device_id: str) -> None:
    """Delete a device (its telemetry and commands with it); its broker client goes too."""
    deleted, _ = Device.objects.filter(device_id=_checked_device_id(device_id)).delete()
    if not deleted:
        raise NotFound(f"Unknown device {device_id!r}.", code="unknown_device")


def device_for_message(*, device_id: str) -> Device:
    """The device behind a topic, per MQTT_UNKNOWN_DEVICES: refused, or registered on first use."""
    _checked_device_id(device_id)
    device = Device.objects.select_related("identity").filter(device_id=device_id).first()
    if device is None:
        if settings.MQTT_UNKNOWN_DEVICES != "register":
            raise NotFound(f"Unknown device {device_id!r}.", code="unknown_device")
        device = device_register(device_id=device_id)
        logger.info("registered unknown device %s (MQTT_UNKNOWN_DEVICES=register)", device_id)
    if not device.enabled:
        raise Forbidden(f"Device {device_id!r} is disabled.", code="device_disabled")
    return device


def device_room_for_post(*, device: Device, room: str) -> Room:
    """The room a device posts into, if it may; in register mode an unknown device gets it."""
    room_obj = room_get(slug=room)
    if device.post_rooms.filter(pk=room_obj.pk).exists():
        return room_obj
    if (
        settings.MQTT_UNKNOWN_DEVICES == "register"
        and not room_obj.private  # private rooms only for provisioned devices
        and not device.post_rooms.exists()
    ):
        # A development device registered on first use may post where it first posts.
        device.post_rooms.add(room_obj)
        device.listen_rooms.add(room_obj)
        return room_obj
    raise Forbidden(f"Device {device.device_id!r} may not post into {room!r}.", code="forbidden_room")


def devices_for_messages(*, device_ids: Collection[str]) -> dict[str, Device]:
    """The enabled devices among `device_ids`, in one query: the batch form of the lookup in
    `device_for_message`. Whoever is missing goes through `device_for_message` (which
    registers or refuses, and refuses disabled devices)."""
    valid = [d for d in device_ids if is_device_id(d)]
    found = Device.objects.select_related("identity").filter(device_id__in=valid, enabled=True)
    return {d.device_id: d for d in found}


# What `device_posts_allowed` reads of each row; the other fields (timestamps, counters)
# are loaded if asked for.
_POST_DEVICE = ["id", "device_id", "identity_id", "enabled", "status"]
_POST_IDENTITY = ["id", "kind", "name", "user_id", "jid"]
_POST_ROOM = ["id", "slug", "title", "private", "last_seq"]


def device_posts_allowed(*, pairs: Collection[tuple[str, str]]) -> dict[tuple[str, str], tuple[Device, Room]]:
    """(device id, room slug) pairs whose device is enabled and may post into the room,
    with the device (its identity loaded) and the room, in one hand-written query (see
    bridge/sql.py). For a batch of chat posts it answers what `devices_for_messages`
    and a query of the allowed (device, room) pairs did: two ORM queries that cost
    more to build than everything else the batch stored. A pair missing from the
    answer goes the one-by-one way, which registers or refuses."""
    # Names that cannot be a room or a device never reach the query (a lone surrogate
    # cannot even be encoded for it); their one-by-one path refuses them.
    pairs = {(d, r) for d, r in pairs if is_device_id(d) and is_room_slug(r)}
    if not pairs:
        return {}
    through = Device.post_rooms.through
    device_in, device_params = sql.in_texts(sorted({d for d, _ in pairs}))
    room_in, room_params = sql.in_texts(sorted({r for _, r in pairs}))
    rows = sql.fetchall(
        f"SELECT {sql.columns(Device, _POST_DEVICE, 'd')}, {sql.columns(Identity, _POST_IDENTITY, 'i')},"
        f" {sql.columns(Room, _POST_ROOM, 'r')}"
        f" FROM {sql.table(through)} t"
        f" JOIN {sql.table(Device)} d ON d.{sql.column(Device, 'id')} = t.{sql.column(through, 'device')}"
        f" JOIN {sql.table(Identity)} i ON i.{sql.column(Identity, 'id')} = d.{sql.column(Device, 'identity')}"
        f" JOIN {sql.table(Room)} r ON r.{sql.column(Room, 'id')} = t.{sql.column(through, 'room')}"
        f" WHERE d.{sql.column(Device, 'enabled')} = %s AND d.{sql.column(Device, 'device_id')} {device_in}"
        f" AND r.{sql.column(Room, 'slug')} {room_in}",
        [True, *device_params, *room_params],
    )
    found: dict[tuple[str, str], tuple[Device, Room]] = {}
    devices: dict[int, Device] = {}
    rooms: dict[int, Room] = {}
    identity_at, room_at = len(_POST_DEVICE), len(_POST_DEVICE) + len(_POST_IDENTITY)
    for row in rows:
        device = devices.get(row[0])
        if device is None:
            device = devices[row[0]] = sql.from_row(Device, _POST_DEVICE, row[:identity_at])
            device.identity = sql.from_row(Identity, _POST_IDENTITY, row[identity_at:room_at])
        room = rooms.get(row[room_at])
        if room is None:
            room = rooms[row[room_at]] = sql.from_row(Room, _POST_ROOM, row[room_at:])
        if (device.device_id, room.slug) in pairs:
            found[(device.device_id, room.slug)] = (device, room)
    return found


def device_rooms(*, device: Device) -> list[Room]:
    """Every room a device belongs to (posts into or listens to), by slug."""
    rooms = {r.pk: r for r in device.post_rooms.all()}
    rooms.update({r.pk: r for r in device.listen_rooms.all()})
    return sorted(rooms.values(), key=lambda r: r.slug)


def device_status_set(*, device: Device, status: str) -> list[Room]:
    """Record `online`/`offline`; returns the rooms where the device's presence changed."""
    if status not in STATUSES:
        raise InvalidInput(f"Status must be 'online' or 'offline', not {status!r}.", code="invalid_status")
    changed: list[Room] = []
    connection = f"mqtt:{device.device_id}"
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(status=status, last_seen=timezone.now())
        for room in device_rooms(device=device):
            if status == "online":
                if presence_join(room=room, identity=device.identity, connection=connection):
                    changed.append(room)
            elif presence_leave(room=room, connection=connection) is not None:
                changed.append(room)
    device.status = status
    return changed


def _validated_reading(data: object) -> tuple[dict[str, Any], str | None, dict[str, float]]:
    """(reading, its id or None, its metrics), or the error its device gets."""
    if not isinstance(data, dict):
        raise InvalidInput("Telemetry is a JSON object of readings.", code="invalid_telemetry")
    jsontext.check_json(data, what="Telemetry", code="invalid_telemetry")
    if len(json.dumps(data)) > MAX_DATA_BYTES:
        raise TooLarge(f"Telemetry is larger than {MAX_DATA_BYTES} bytes.")
    metrics = flatten(data)
    key = data.get("id")
    if key is not None:
        if not isinstance(key, str) or not key or len(key) > MAX_CLIENT_KEY:
            raise InvalidInput(
                f"'id' must be a non-empty string of at most {MAX_CLIENT_KEY} characters.",
                code="invalid_id",
            )
        jsontext.check_text(key, what="'id'", code="invalid_id")
    return data, key, metrics


def telemetry_store(*, device: Device, data: object) -> tuple[Telemetry, bool]:
    """Store one reading; the same `id` inside it twice stores one row. (row, created).

    Its numeric metrics are extracted here, by the rule of `bridge.metrics`, so a
    malformed reading is refused to its device and the worker sees only numbers.
    """
    data, key, metrics = _validated_reading(data)
    if key is not None:
        existing = Telemetry.objects.filter(device=device, client_key=key).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            row = Telemetry.objects.create(
                device=device, data=data, received=timezone.now(), client_key=key, metrics=metrics
            )
    except IntegrityError:
        return Telemetry.objects.get(device=device, client_key=key), False
    return row, True


def telemetry_store_many(*, readings: list[tuple[Device, object]]) -> list[bool | BridgeError]:
    """Store a batch of readings with one key lookup and one insert; per reading, whether it
    was new, or the error that refused it. Ids already stored (or twice here) store nothing."""
    results: list[bool | BridgeError] = []
    valid: list[tuple[int, Device, dict[str, Any], str | None, dict[str, float]]] = []
    for index, (device, data) in enumerate(readings):
        try:
            reading, key, metrics = _validated_reading(data)
        except BridgeError as exc:
            results.append(exc)
            continue
        results.append(False)
        valid.append((index, device, reading, key, metrics))
    keys = {key for _, _, _, key, _ in valid if key is not None}
    seen = set(
        Telemetry.objects.filter(
            client_key__in=keys, device_id__in={d.pk for _, d, _, _, _ in valid}
        ).values_list("device_id", "client_key")
    ) if keys else set()
    now = timezone.now()
    rows: list[Telemetry] = []
    for index, device, reading, key, metrics in valid:
        if key is not None:
            if (device.pk, key) in seen:
                continue
            seen.add((device.pk, key))
        rows.append(Telemetry(device=device, data=reading, received=now, client_key=key,
                              metrics=metrics))
        results[index] = True
    try:
        with transaction.atomic():
            Telemetry.objects.bulk_create(rows)
    except IntegrityError:
        # Another process stored one of these ids meanwhile: one at a time, each atomic.
        return [
            result if isinstance(result, BridgeError) else telemetry_store(device=d, data=data)[1]
            for result, (d, data) in zip(results, readings, strict=True)
        ]
    return results


@dataclass(frozen=True)
class CommandOut:
    """A command claimed for publishing: where it goes and what it says."""

    id: int
    device_id: str
    payload: dict[str, Any]


def device_command_create(
    *, device_id: str, text: str, sender: Identity, origin: str, message: Message | None = None
) -> DeviceCommand:
    """Record a command for a device; a runmqtt process publishes it once."""
    _checked_device_id(device_id)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("A command needs 'text'.", code="empty_command")
    jsontext.check_text(
        text, what="A command", code="invalid_text", max_chars=settings.BRIDGE_MAX_TEXT
    )
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        raise NotFound(f"Unknown device {device_id!r}.", code="unknown_device")
    if message is not None:
        existing = DeviceCommand.objects.filter(message=message).first()
        if existing is not None:
            return existing
    return DeviceCommand.objects.create(
        device=device, text=text, sender=sender, origin=origin, message=message
    )


async def adevice_commands_wake() -> None:
    """Nudge the MQTT edge. Losing this only delays the command: its sweep finds it."""
    await layer.group_send(DEVICE_COMMANDS_GROUP, {"type": "devices.command"})


def device_commands_wake() -> None:
    async_to_sync(adevice_commands_wake)()


def device_commands_claim(*, ids: Iterable[int] | None = None, limit: int = 100) -> list[CommandOut]:
    """Claim unpublished commands: each row is claimed by exactly one caller (compare-and-set).

    Claim-then-publish, like the room cursor: a crash between the two loses
    the command rather than sending it twice (a command may act on the world).
    """
    pending = DeviceCommand.objects.filter(published_at__isnull=True).select_related(
        "device", "sender"
    ).order_by("pk")
    if ids is not None:
        pending = pending.filter(pk__in=list(ids))
    claimed: list[CommandOut] = []
    for command in pending[:limit]:
        won = DeviceCommand.objects.filter(pk=command.pk, published_at__isnull=True).update(
            published_at=timezone.now()
        )
        if won:
            claimed.append(
                CommandOut(
                    id=command.pk,
                    device_id=command.device.device_id,
                    payload={
                        "id": command.pk,
                        "text": command.text,
                        "sender": command.sender.as_sender(),
                        "origin": command.origin,
                        "created": command.created.isoformat(),
                    },
                )
            )
    return claimed
