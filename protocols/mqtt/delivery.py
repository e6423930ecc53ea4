"""Room messages out to MQTT, at least once: lease a room's range, publish it, wait for the
broker's answers, then move the room's cursor past what the broker has.

The cursor (`EdgeCursor`, edge "mqtt") moves only past messages the broker
accepted (PUBACK) or refused for good (dropped and logged by the server, never
retried): a `runmqtt` killed before the answers leaves the range leased but
not delivered, and the next holder of the lease publishes it again. The lease's
owner is the process's MQTT client id, which no two live processes share: a
restarted process takes its rooms back at once, another process after
`MQTT_PUBLISH_LEASE` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from django.db import DatabaseError

from bridge import instruments
from bridge.envelope import Envelope
from bridge.health import HEALTH
from bridge.probes import DATABASE
from protocols.mqtt import outbound
from protocols.mqtt.events import PublishedEvent
from protocols.mqtt.topics import Topics

logger = logging.getLogger(__name__)

PublishConfirmed = Callable[[str, str], Awaitable["asyncio.Future[PublishedEvent]"]]
# Pause after a publish the server lost with its client (it is being replaced), so the
# next try finds the new one instead of spinning.
LOST_PAUSE = 1.0
RETRY_MIN, RETRY_MAX = 0.1, 5.0
# Envelopes kept by `RecentlyStored`, at most (two claims' worth).
RECENT_MAX = 2 * outbound.CLAIM_LIMIT


class RecentlyStored:
    """The envelopes this process stored last, by (room id, seq), so that the publisher
    can take a range it just stored without reading it back.

    Reading it back (the claim's query, with three ORM objects and an envelope
    built per message) was a tenth of `runmqtt` in a steady stream. Only envelopes
    of committed rows come here, and a row never changes after its commit, so a
    range found here whole is what the database holds; anything missing (stored by
    another process, or pushed out: at most RECENT_MAX are kept) is read as before.
    Both run in the database thread, `add` right after the commit: a claim queued
    behind a store finds what it stored. Each envelope's JSON, encoded once for the
    room's sockets, is kept beside it and published as it is (`text`).
    """

    def __init__(self, size: int = RECENT_MAX) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, int], tuple[Envelope, str]] = OrderedDict()

    def add(self, stored: Iterable[tuple[int, Envelope, str]]) -> None:
        items = self._items
        for room_id, envelope, text in stored:
            items[(room_id, envelope["seq"])] = (envelope, text)
        while len(items) > self.size:
            items.popitem(last=False)

    def range(self, room_id: int, after: int, upto: int) -> list[Envelope] | None:
        found = []
        get = self._items.get
        for seq in range(after + 1, upto + 1):
            item = get((room_id, seq))
            if item is None:
                return None
            found.append(item[0])
        return found

    def text(self, room_id: int, envelope: Envelope) -> str:
        """`envelope` as JSON: the text kept with it if it came from here, else encoded now."""
        item = self._items.get((room_id, envelope["seq"]))
        if item is not None and item[0] is envelope:
            return item[1]
        return json.dumps(envelope)


@dataclass
class Delivered:
    # Commands some of the messages gave devices, claimed (published at most once).
    commands: list[outbound.CommandOut] = field(default_factory=list)
    # Look at the room again now: a full batch went out, or some of it must go again.
    more: bool = False


class RoomDelivery:
    """Delivers one room at a time for the MQTT consumer (its publisher loop).

    `publish` hands one message to the broker client and returns a future of its
    `mqtt.published` outcome. `publish_private` is False when the broker does
    not keep private rooms' topics to their members: their messages are then
    passed over (the cursor moves, nothing is published).
    """

    def __init__(self, *, owner: str, topics: Topics, publish: PublishConfirmed, lease: float,
                 publish_private: bool) -> None:
        self.owner = owner
        self.topics = topics
        self.publish = publish
        self.lease = lease
        self.publish_private = publish_private
        self.recent = RecentlyStored()

    def stored(self, stored: Iterable[tuple[int, Envelope, str]]) -> None:
        """(room id, envelope, its JSON) of messages this process just committed: see
        RecentlyStored."""
        self.recent.add(stored)

    async def deliver(self, slug: str) -> Delivered:
        """Publish the room's messages after its cursor (a batch), if no other process is."""
        claimed = await database_sync_to_async(outbound.room_claim)(
            slug=slug, owner=self.owner, lease=self.lease, recent=self.recent.range
        )
        if not claimed.envelopes:
            return Delivered(commands=claimed.commands)
        envelopes = claimed.envelopes if self.publish_private or not claimed.private else []
        topic = self.topics.room_messages(slug)
        text = self.recent.text
        futures = [await self.publish(topic, text(claimed.room_id, envelope)) for envelope in envelopes]
        outcomes = await self._answers(claimed.room_id, futures)
        delivered_to = claimed.envelopes[-1]["seq"]
        accepted = 0
        lost = False
        for envelope, outcome in zip(envelopes, outcomes, strict=True):
            if outcome["outcome"] == "lost":
                # Everything from here goes again (what came after it may arrive twice).
                delivered_to, lost = envelope["seq"] - 1, True
                break
            accepted += outcome["outcome"] == "accepted"
        instruments.delivered("mqtt", accepted)
        await self._delivered(claimed.room_id, delivered_to)
        if lost:
            logger.warning("room %s: publishes after #%s were lost with the broker client; "
                           "publishing them again", slug, delivered_to)
            await asyncio.sleep(LOST_PAUSE)
        return Delivered(commands=claimed.commands, more=claimed.more or lost)

    async def _answers(self, room_id: int, futures: list[asyncio.Future[PublishedEvent]]) -> list[PublishedEvent]:
        """Every outcome, however long the broker takes (paho resends after a reconnect);
        the lease is renewed meanwhile, so no other process takes the room from a live one."""
        pending = set(futures)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=self.lease / 3)
            if pending:
                try:
                    held = await database_sync_to_async(outbound.room_lease_renew)(
                        room_id=room_id, owner=self.owner, lease=self.lease
                    )
                except DatabaseError as exc:
                    HEALTH.failing(DATABASE, exc)
                    continue
                if not held:
                    logger.warning("lost the MQTT lease on room %s while waiting for the broker: "
                                   "another process may publish some messages again", room_id)
        return [future.result() for future in futures]

    async def _delivered(self, room_id: int, to_seq: int) -> None:
        """Move the cursor; the broker has these, so keep trying through a database outage
        (giving up would publish them all again)."""
        pause = RETRY_MIN
        while True:
            try:
                held = await database_sync_to_async(outbound.room_delivered)(
                    room_id=room_id, owner=self.owner, to_seq=to_seq
                )
            except DatabaseError as exc:
                HEALTH.failing(DATABASE, exc)
                logger.log(logging.WARNING if pause == RETRY_MIN else logging.DEBUG,
                           "cannot move room %s's MQTT cursor to #%s (%s); retrying in %.1f s",
                           room_id, to_seq, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            HEALTH.ok(DATABASE)
            if not held:
                logger.warning("room %s: the MQTT lease had lapsed to another process before #%s "
                               "was delivered; it may publish some messages again", room_id, to_seq)
            return
