"""The MQTT batch store against the database DATABASE_URL names, in a process of its own.

python -m tests.support.ingest_scenarios   (DATABASE_URL and the bridge's settings in the environment)

Migrates, then runs the batches the ingest tests run in-process on SQLite (a
duplicate id in the middle, a batch spanning rooms, a commit that fails and
the same batch again), and prints one JSON object of what it saw, for a test
to assert on: so the PostgreSQL path (native UUIDs, jsonb, its own INSERT
values) is checked on a real server.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", "-v0")
    sys.stdout.write(json.dumps(_scenarios()) + "\n")


def _scenarios() -> dict[str, Any]:
    from django.db import OperationalError
    from django.db.backends.base.base import BaseDatabaseWrapper

    from bridge.envelope import message_envelope
    from bridge.models import Message, Room
    from bridge.services.devices import device_register
    from bridge.services.rooms import room_create
    from protocols.mqtt.ingest import ingest_batch
    from protocols.mqtt.topics import Topics

    topics = Topics(prefix="", shared_group="")
    for slug in ("lobby", "kitchen", "hall"):
        room_create(slug=slug)
    device_register(device_id="sensor-1", post_rooms=["lobby", "kitchen", "hall"])

    def post(room: str, text: str, key: str | None = None, data: Any = None) -> tuple[str, bytes]:
        body = {"text": text, **({"id": key} if key else {}), **({"data": data} if data else {})}
        return f"devices/sensor-1/rooms/{room}", json.dumps(body).encode()

    def rows(room: str) -> list[list[Any]]:
        found = Message.objects.filter(room__slug=room).order_by("seq").values_list("seq", "text")
        return [list(row) for row in found]

    def seqs(outcomes: list[Any]) -> list[Any]:
        return [[o.envelope["room"], o.envelope["seq"]] if o.envelope else o.error.code for o in outcomes]

    seen: dict[str, Any] = {}
    duplicate = ingest_batch(topics=topics, messages=[
        post("lobby", "a", "k1", {"t": 21.5}), post("lobby", "b", "k2"), post("lobby", "a again", "k1"),
        post("lobby", "c", "k3"),
    ])
    seen["duplicate"] = {"rows": rows("lobby"), "outcomes": seqs(duplicate)}
    # What the batch answered is what the database holds, field by field (ids, data, times).
    stored = {str(m.id): message_envelope(m) for m in Message.objects.select_related("room", "sender")}
    seen["envelopes_match"] = all(
        o.envelope == stored[o.envelope["id"]] for o in duplicate if o.envelope is not None
    )

    spanning = ingest_batch(topics=topics, messages=[
        post("kitchen", "k1"), post("hall", "h1"), post("kitchen", "k2"), post("nowhere", "x"),
        post("hall", "h2"),
    ])
    seen["spanning"] = {"kitchen": rows("kitchen"), "hall": rows("hall"), "outcomes": seqs(spanning)}

    batch = [post("lobby", "one", "f1"), post("kitchen", "two", "f2"), post("lobby", "three", "f3")]
    real_commit = BaseDatabaseWrapper.commit

    def failing_commit(self: BaseDatabaseWrapper) -> None:
        raise OperationalError("the server closed the connection during COMMIT")

    BaseDatabaseWrapper.commit = failing_commit  # type: ignore[method-assign]
    try:
        ingest_batch(topics=topics, messages=batch)
        seen["failed_commit_raised"] = False
    except OperationalError:
        seen["failed_commit_raised"] = True
    finally:
        BaseDatabaseWrapper.commit = real_commit  # type: ignore[method-assign]
    seen["after_failed_commit"] = {"lobby": rows("lobby"), "kitchen": rows("kitchen"),
                                   "lobby_last_seq": Room.objects.get(slug="lobby").last_seq}
    again = [seqs(ingest_batch(topics=topics, messages=batch)) for _ in range(2)]
    seen["retried"] = {"lobby": rows("lobby"), "kitchen": rows("kitchen"), "outcomes": again}
    seen["large"] = _large_batch(topics, post)
    seen["claims"] = _claims(topics, post)
    return seen


def _claims(topics: Any, post: Any) -> dict[str, Any]:
    """The publisher's statements (hand-written, bridge/sql.py) on this database: who may
    post where, a claim from memory and from the database, the lease held against another
    process, renewed, lapsed and given back, the cursor moved only forward."""
    from datetime import timedelta

    from django.utils import timezone

    from bridge.models import EdgeCursor, Room
    from bridge.services.devices import device_posts_allowed, device_register
    from bridge.services.rooms import room_create
    from protocols.mqtt import outbound
    from protocols.mqtt.delivery import RecentlyStored
    from protocols.mqtt.ingest import ingest_batch

    seen: dict[str, Any] = {}
    room_create(slug="attic", private=True)
    device_register(device_id="sensor-9", post_rooms=["attic"], listen_rooms=["hall"])
    allowed = device_posts_allowed(pairs={("sensor-9", "attic"), ("sensor-9", "hall"), ("sensor-1", "attic"),
                                          ("sensor-1", "hall"), ("nobody", "hall")})
    seen["allowed"] = sorted(
        [d, r, device.identity.kind, device.identity.name, room.private, room.title == "", room.pk == Room.objects.get(slug=r).pk]
        for (d, r), (device, room) in allowed.items()
    )
    outbound.rooms_track(known=set(), started=timezone.now() - timedelta(days=1))
    outcomes = ingest_batch(topics=topics, messages=[
        ("devices/sensor-9/rooms/attic", b"one"), ("devices/sensor-9/rooms/attic", b"two")])
    recent = RecentlyStored()
    recent.add((o.room_id, o.envelope, json.dumps(o.envelope)) for o in outcomes if o.envelope)
    first = outbound.room_claim(slug="attic", owner="b1", lease=30, recent=recent.range)
    seen["first"] = [[e["seq"], e["text"]] for e in first.envelopes] + [first.private]
    seen["held"] = outbound.room_claim(slug="attic", owner="b2", lease=30).envelopes == []
    seen["renewed"] = [outbound.room_lease_renew(room_id=first.room_id, owner=o, lease=30) for o in ("b1", "b2")]
    seen["delivered"] = outbound.room_delivered(room_id=first.room_id, owner="b1", to_seq=2)
    seen["not_back"] = outbound.room_delivered(room_id=first.room_id, owner="b1", to_seq=1)
    cursor = EdgeCursor.objects.get(edge="mqtt", room_id=first.room_id)
    seen["cursor"] = [cursor.seq, cursor.lease_owner, cursor.lease_until]
    ingest_batch(topics=topics, messages=[("devices/sensor-9/rooms/attic", b"three")])
    taken = outbound.room_claim(slug="attic", owner="b2", lease=30)  # from the database
    seen["taken"] = [e["text"] for e in taken.envelopes]
    EdgeCursor.objects.filter(pk=cursor.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    lapsed = outbound.room_claim(slug="attic", owner="b1", lease=30)
    seen["lapsed"] = [e["text"] for e in lapsed.envelopes]
    missing = outbound.room_claim(slug="cellar", owner="b1", lease=30)
    seen["missing_room"] = [missing.room_id, missing.envelopes]
    return seen


def _large_batch(topics: Any, post: Any) -> dict[str, Any]:
    """A batch large enough for PostgreSQL's COPY path (messages_insert.COPY_FROM), with the
    values COPY's text format must escape, a duplicate id, and a row COPY must refuse."""
    from django.db import IntegrityError, transaction

    from bridge.envelope import message_envelope
    from bridge.models import Message, Room
    from bridge.services.message_insert import COPY_FROM, messages_insert
    from protocols.mqtt.ingest import ingest_batch

    awkward = ["tab\there", "new\nline", "back\\slash \\N", "quote ' \" \u00e9\u00e8 \u2603", "\\.", ""]
    texts = [f"{i} {awkward[i % len(awkward)]}" for i in range(COPY_FROM + 10)]
    data = {"nested": {"list": [1, 2.5, None, True, "x\ty"]}, "big": 2**53, "text": "\\N \t"}
    batch = [post("hall", text, f"large-{i}", data if i % 3 == 0 else None) for i, text in enumerate(texts)]
    batch.insert(7, post("hall", "a duplicate", "large-3"))
    outcomes = ingest_batch(topics=topics, messages=batch)
    stored = {str(m.id): message_envelope(m) for m in Message.objects.select_related("room", "sender")}
    fresh = [o for o in outcomes if o.envelope is not None]
    hall = Message.objects.filter(room__slug="hall").order_by("seq")
    seen: dict[str, Any] = {
        "sent": len(batch),
        "stored": hall.count(),
        "texts_match": [m.text for m in hall][2:] == texts,
        "duplicate_answers": outcomes[7].envelope["seq"] == outcomes[3].envelope["seq"],
        "envelopes_match": all(o.envelope == stored[o.envelope["id"]] for o in fresh),
        "data_match": hall.get(idempotency_key__endswith=":large-0").data == data,
    }
    # The same batch again (the broker redelivering it): every id found, nothing new stored.
    again = ingest_batch(topics=topics, messages=batch)
    seen["again_same"] = [o.envelope and o.envelope["seq"] for o in again] == [
        o.envelope and o.envelope["seq"] for o in outcomes]
    seen["again_stored"] = hall.count()
    # Two rows with one (room, seq): the statement fails whole, as bulk_create would.
    room = Room.objects.get(slug="hall")
    last = room.last_seq
    rows = [Message(room=room, seq=last + 1 + i // 2, origin="api", sender=hall.first().sender,
                    text=f"clash {i}", created=hall.first().created) for i in range(COPY_FROM)]
    try:
        with transaction.atomic():
            messages_insert(rows)
        seen["clash"] = "written"
    except IntegrityError:
        seen["clash"] = "IntegrityError"
    seen["after_clash"] = Message.objects.filter(room=room).count()
    return seen


if __name__ == "__main__":
    main()
