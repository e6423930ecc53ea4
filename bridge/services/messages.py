"""Posting a message: validate, store once with the room's next seq, then fan out."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from bridge.envelope import Envelope, message_envelope
from bridge.exceptions import InvalidInput, TooLarge
from bridge.models import Identity, Message, Room
from bridge.names import ORIGINS, room_group
from bridge.selectors import room_get
from bridge.services.tasks import task_schedule, tasks_wake

logger = logging.getLogger(__name__)

# Characters XML 1.0 cannot carry: refusing them here keeps every message deliverable to XMPP.
_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
MAX_CLIENT_KEY = 200
MAX_DATA_BYTES = 16384
ROOM_STATS_DELAY = timedelta(seconds=2)


@dataclass(frozen=True)
class PostResult:
    message: Message
    envelope: Envelope
    created: bool


def _validated_text(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidInput("'text' must be a string.", code="invalid_text")
    if len(text) > settings.BRIDGE_MAX_TEXT:
        raise TooLarge(f"'text' is longer than {settings.BRIDGE_MAX_TEXT} characters.")
    if _INVALID_CHARS.search(text):
        raise InvalidInput("'text' contains control characters.", code="invalid_text")
    return text


def _validated_data(data: object) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidInput("'data' must be a JSON object or null.", code="invalid_data")
    try:
        encoded = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"'data' is not valid JSON: {exc}", code="invalid_data") from exc
    if len(encoded) > MAX_DATA_BYTES:
        raise TooLarge(f"'data' is larger than {MAX_DATA_BYTES} bytes.")
    return data


def _validated_key(client_key: object) -> str | None:
    if client_key is None:
        return None
    if not isinstance(client_key, str) or not client_key or len(client_key) > MAX_CLIENT_KEY:
        raise InvalidInput(
            f"'client_id' must be a non-empty string of at most {MAX_CLIENT_KEY} characters.",
            code="invalid_client_id",
        )
    return client_key


def message_store(
    *,
    room: str | Room,
    sender: Identity,
    origin: str,
    text: str,
    data: dict[str, Any] | None = None,
    client_key: str | None = None,
) -> PostResult:
    """Store one message exactly once; does not tell anyone (see `message_post`).

    The room row lock (SQLite: the IMMEDIATE transaction) serialises writers per
    room, so `seq` has no gaps and no duplicates. The same `client_key` from the
    same sender returns the stored message with `created=False`.
    """
    if origin not in ORIGINS:
        raise InvalidInput(f"Unknown origin {origin!r}.", code="invalid_origin")
    text = _validated_text(text)
    data = _validated_data(data)
    client_key = _validated_key(client_key)
    if not text.strip() and data is None:
        raise InvalidInput("A message needs 'text' or 'data'.", code="empty_message")
    room_obj = room if isinstance(room, Room) else room_get(slug=room)
    key = f"{sender.kind}:{sender.name}:{client_key}" if client_key is not None else None

    try:
        with transaction.atomic():
            locked = Room.objects.select_for_update().only("id", "last_seq").get(pk=room_obj.pk)
            if key is not None:
                existing = _by_key(room_obj, key)
                if existing is not None:
                    return PostResult(existing, message_envelope(existing, room_slug=room_obj.slug), False)
            seq = locked.last_seq + 1
            Room.objects.filter(pk=room_obj.pk).update(last_seq=seq)
            message = Message.objects.create(
                room=room_obj,
                seq=seq,
                origin=origin,
                sender=sender,
                text=text,
                data=data,
                created=timezone.now(),
                idempotency_key=key,
            )
            scheduled = task_schedule(
                name="room_stats",
                key=f"room_stats:{room_obj.pk}",
                args={"room": room_obj.pk},
                delay=ROOM_STATS_DELAY,
            )
            if scheduled:
                transaction.on_commit(tasks_wake)
    except IntegrityError:
        # Only reachable if a writer raced us without the room lock; the key decides.
        existing = _by_key(room_obj, key) if key is not None else None
        if existing is None:
            raise
        return PostResult(existing, message_envelope(existing, room_slug=room_obj.slug), False)
    return PostResult(message, message_envelope(message, room_slug=room_obj.slug), True)


def _by_key(room: Room, key: str) -> Message | None:
    # No ORDER BY: with the model's (room, seq) ordering, first() let SQLite walk the
    # room's seq index instead of the key's index, a cost that grew with the room.
    found = Message.objects.select_related("sender").filter(room=room, idempotency_key=key)
    return next(iter(found.order_by()[:1]), None)


async def message_fanout(envelope: Envelope) -> None:
    """Tell every edge listening to the room. At most once: clients fill gaps from history.

    Best effort by design: the message is stored, so a channel layer that is down
    delays live delivery (receivers catch up by `seq`) but must not fail the post.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(
            room_group(envelope["room"]), {"type": "room.message", "message": envelope}
        )
    except Exception:  # stored already: a lost fan-out only delays receivers
        logger.warning(
            "could not fan out %s#%s; receivers will catch up from history",
            envelope["room"], envelope["seq"], exc_info=True,
        )


def message_post(
    *,
    room: str | Room,
    sender: Identity,
    origin: str,
    text: str,
    data: dict[str, Any] | None = None,
    client_key: str | None = None,
) -> PostResult:
    """Store, then fan out. A repeated post fans out again: receivers dedupe by `seq`,
    and a crash between commit and fan-out is healed by the redelivery."""
    result = message_store(
        room=room, sender=sender, origin=origin, text=text, data=data, client_key=client_key
    )
    async_to_sync(message_fanout)(result.envelope)
    return result


async def amessage_post(
    *,
    room: str | Room,
    sender: Identity,
    origin: str,
    text: str,
    data: dict[str, Any] | None = None,
    client_key: str | None = None,
) -> PostResult:
    """`message_post` for async callers (consumers, protocol servers)."""
    result: PostResult = await database_sync_to_async(message_store)(
        room=room, sender=sender, origin=origin, text=text, data=data, client_key=client_key
    )
    await message_fanout(result.envelope)
    return result
