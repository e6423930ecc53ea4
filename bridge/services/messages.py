"""Posting a message: validate, store once with the room's next seq, then fan out."""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone

from bridge import jsontext, layer, sql
from bridge.envelope import Envelope, message_envelope
from bridge.exceptions import BridgeError, InvalidInput, TooLarge
from bridge.instruments import FANOUT_SECONDS, MESSAGES_IN, MESSAGES_REPLAYED, STORE_SECONDS, timed
from bridge.models import Identity, Message, Room
from bridge.names import ORIGINS, room_group
from bridge.selectors import room_get
from bridge.services.message_insert import messages_insert
from bridge.services.tasks import task_schedule, tasks_wake

logger = logging.getLogger(__name__)

MAX_CLIENT_KEY = 200
MAX_DATA_BYTES = 16384
ROOM_STATS_DELAY = timedelta(seconds=2)


@dataclass(frozen=True)
class PostResult:
    message: Message
    envelope: Envelope
    created: bool


def _validated_text(text: object) -> str:
    return jsontext.check_text(
        text, what="'text'", code="invalid_text", max_chars=settings.BRIDGE_MAX_TEXT
    )


def _validated_data(data: object) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidInput("'data' must be a JSON object or null.", code="invalid_data")
    # Edges decoded it with jsontext.loads already; Python callers get the same rules.
    jsontext.check_json(data, what="'data'", code="invalid_data")
    encoded = json.dumps(data)
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
    return jsontext.check_text(client_key, what="'client_id'", code="invalid_client_id")


@dataclass(frozen=True)
class NewMessage:
    """One message to store, as an edge decoded it (validated by the store)."""

    sender: Identity
    origin: str
    text: str
    data: dict[str, Any] | None = None
    client_key: str | None = None


# PostgreSQL: this many idempotency keys or more are looked up as one array (see _by_keys).
ARRAY_FROM = 20
_PENDING = BridgeError("not stored yet", code="pending")


@dataclass(frozen=True)
class _Valid:
    item: NewMessage
    text: str
    data: dict[str, Any] | None
    key: str | None


def _validated(item: NewMessage) -> _Valid:
    if item.origin not in ORIGINS:
        raise InvalidInput(f"Unknown origin {item.origin!r}.", code="invalid_origin")
    text = _validated_text(item.text)
    data = _validated_data(item.data)
    client_key = _validated_key(item.client_key)
    if not text.strip() and data is None:
        raise InvalidInput("A message needs 'text' or 'data'.", code="empty_message")
    sender = item.sender
    key = f"{sender.kind}:{sender.name}:{client_key}" if client_key is not None else None
    return _Valid(item, text, data, key)


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

    The same `client_key` from the same sender returns the stored message with
    `created=False`. Bad input raises the bridge's error and stores nothing.
    """
    item = NewMessage(sender=sender, origin=origin, text=text, data=data, client_key=client_key)
    valid = _validated(item)  # before the room lookup: a bad message is refused as such
    room_obj = room if isinstance(room, Room) else room_get(slug=room)
    results: list[PostResult | BridgeError] = [_PENDING]
    try:
        _store_valid(room_obj, [(0, valid)], results)
    except IntegrityError:
        # Only reachable if a writer raced us without the room lock; the key decides.
        existing = _by_key(room_obj, valid.key) if valid.key is not None else None
        if existing is None:
            raise
        return PostResult(existing, message_envelope(existing, room_slug=room_obj.slug), False)
    (result,) = results
    assert isinstance(result, PostResult)
    return result


def message_store_many(*, room: Room, messages: Sequence[NewMessage]) -> list[PostResult | BridgeError]:
    """Store several messages into one room in one transaction, in the given order.

    One result per message, in order: the stored (or already stored) message,
    or the error that refused it (nothing of a refused message is written).
    The room row lock (SQLite: the IMMEDIATE transaction) serialises writers per
    room, so `seq` has no gaps and no duplicates; one lock, one key lookup, one
    insert and one stats task for the whole batch is what makes bursts cheap.

    Inside a caller's transaction (a batch of device or occupant messages) no
    savepoint of its own: an exception here ends the caller's transaction as it
    would have anyway (nothing catches it in between), without two more
    statements (two round trips on PostgreSQL) per room and batch.
    """
    results: list[PostResult | BridgeError] = []
    valid: list[tuple[int, _Valid]] = []
    for index, item in enumerate(messages):
        try:
            valid.append((index, _validated(item)))
        except BridgeError as exc:
            results.append(exc)
            continue
        results.append(_PENDING)  # replaced by _store_valid
    if valid:
        _store_valid(room, valid, results, savepoint=False)
    return results


def _store_valid(
    room: Room,
    valid: list[tuple[int, _Valid]],
    results: list[PostResult | BridgeError],
    *,
    savepoint: bool = True,
) -> None:
    """Store validated messages under the room lock; results[index] gets each outcome.

    A key seen twice (already stored, or earlier in this batch) gives the stored
    row with `created=False`. `savepoint=False`: inside a transaction, an
    exception leaves it for the caller to roll back whole (`message_store` keeps
    the savepoint: it goes on after an IntegrityError).
    """
    with timed(STORE_SECONDS), transaction.atomic(savepoint=savepoint):
        seq = _room_locked(room.pk)
        keys = [v.key for _, v in valid if v.key is not None]
        existing = _by_keys(room, keys) if keys else {}
        now = timezone.now()
        new_rows: list[Message] = []
        ids = _new_ids(len(valid))
        for (index, v), new_id in zip(valid, ids, strict=True):
            if v.key is not None and v.key in existing:
                found = existing[v.key]
                results[index] = PostResult(found, message_envelope(found, room_slug=room.slug), False)
                continue
            seq += 1
            row = Message(
                id=new_id, room=room, seq=seq, origin=v.item.origin, sender=v.item.sender, text=v.text,
                data=v.data, created=now, idempotency_key=v.key,
            )
            new_rows.append(row)
            if v.key is not None:
                existing[v.key] = row  # the same key twice in one batch: one row
            results[index] = PostResult(row, message_envelope(row, room_slug=room.slug), True)
        transaction.on_commit(functools.partial(_count, valid, results))
        if new_rows:
            messages_insert(new_rows)
            sql.execute(f"UPDATE {sql.table(Room)} SET {sql.column(Room, 'last_seq')} = %s"
                        f" WHERE {sql.column(Room, 'id')} = %s",
                        [seq, room.pk])
            scheduled = task_schedule(
                name="room_stats",
                key=f"room_stats:{room.pk}",
                args={"room": room.pk},
                delay=ROOM_STATS_DELAY,
            )
            if scheduled:
                transaction.on_commit(tasks_wake)


def _new_ids(count: int) -> list[uuid.UUID]:
    """`count` random (version 4) UUIDs from one read of the system's random source:
    `uuid4()` per message, a system call each, was a twelfth of a batch's time."""
    raw = os.urandom(16 * count)
    return [uuid.UUID(bytes=raw[i:i + 16], version=4) for i in range(0, 16 * count, 16)]


def _count(valid: list[tuple[int, _Valid]], results: list[PostResult | BridgeError]) -> None:
    """Once committed: messages stored, and replays answered with what was stored."""
    for index, v in valid:
        result = results[index]
        if isinstance(result, PostResult):
            counter = MESSAGES_IN if result.created else MESSAGES_REPLAYED
            counter.labels(edge=v.item.origin).inc()


def _room_locked(room_id: int) -> int:
    """The room's last seq, its row locked until the transaction ends (SQLite: BEGIN
    IMMEDIATE holds the database already). Hand-written SQL (see bridge/sql.py)."""
    row = sql.fetchone(
        f"SELECT {sql.column(Room, 'last_seq')} FROM {sql.table(Room)}"
        f" WHERE {sql.column(Room, 'id')} = %s{sql.for_update()}",
        [room_id],
    )
    if row is None:
        raise Room.DoesNotExist(f"room {room_id} is gone")
    return int(row[0])


def _by_keys(room: Room, keys: list[str]) -> dict[str, Message]:
    """The room's messages stored under any of `keys`. Most batches have none: a
    hand-written probe for the keys answers that (see bridge/sql.py), and only
    the keys it finds are read with their senders through the ORM."""
    condition, params = sql.in_texts(keys)
    key_column = sql.column(Message, "idempotency_key")
    present = sql.fetchcol(
        f"SELECT {key_column} FROM {sql.table(Message)} WHERE {sql.column(Message, 'room')} = %s"
        f" AND {key_column} {condition}",
        [room.pk, *params],
    )
    if not present:
        return {}
    wanted: Any = present
    if connection.vendor == "postgresql" and len(present) >= ARRAY_FROM:
        # One array parameter, not a placeholder per key: psycopg scans a long statement
        # in Python on every call to number its placeholders (see message_insert._copy).
        wanted = RawSQL("SELECT unnest(%s::text[])", [present])
    found = Message.objects.select_related("sender").filter(room=room, idempotency_key__in=wanted)
    return {m.idempotency_key: m for m in found.order_by() if m.idempotency_key is not None}


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
    # `json`: the envelope encoded once here, so WebSocket receivers (one per socket)
    # build their frame around it instead of encoding it again each.
    message = {"type": "room.message", "message": envelope, "json": json.dumps(envelope)}
    with timed(FANOUT_SECONDS):
        sent = await layer.group_send(room_group(envelope["room"]), message)
    if not sent:
        logger.info("could not fan out %s#%s; receivers will catch up from history",
                    envelope["room"], envelope["seq"])


async def messages_fanout(envelopes: Sequence[Envelope], texts: Sequence[str | None] | None = None) -> None:
    """Tell every edge about several stored messages: one `room.messages` per room.

    One channel-layer round trip per room instead of one per message (each costs
    a Redis round trip, and each receiver a dispatch): what a batch of device
    messages needs. Each envelope is JSON-encoded here, once, so a receiver that
    forwards it (a WebSocket) does not encode it again per socket. The event:
    `{"type": "room.messages", "room": slug, "messages": [{"seq", "json"}, ...]}`,
    ascending `seq`, each seq once. Best effort, like `message_fanout`. `texts[i]`,
    when given, is envelopes[i] already encoded (the MQTT edge publishes it too).
    """
    by_room: dict[str, dict[int, tuple[Envelope, str | None]]] = {}
    given = texts if texts is not None else [None] * len(envelopes)
    for envelope, text in zip(envelopes, given, strict=True):
        by_room.setdefault(envelope["room"], {})[envelope["seq"]] = (envelope, text)
    for slug, messages in by_room.items():
        items = []
        for seq in sorted(messages):
            envelope, text = messages[seq]
            items.append({"seq": seq, "json": text if text is not None else json.dumps(envelope)})
        event = {"type": "room.messages", "room": slug, "messages": items}
        with timed(FANOUT_SECONDS):
            sent = await layer.group_send(room_group(slug), event)
        if not sent:
            logger.info("could not fan out %s#%s-%s; receivers will catch up from history",
                        slug, items[0]["seq"], items[-1]["seq"])


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
