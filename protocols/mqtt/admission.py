"""Per-device rate limits on what devices publish: a batch split into admitted and dropped.

A device over its rate (MQTT_RATE per second, MQTT_BURST at once; see
bridge/ratelimit.py) has its excess messages acknowledged and dropped before
they reach the database, so one flooding device costs the others almost
nothing. Each batch asks the limiter once per device, for all of that device's
messages in it. A streak of drops is logged once when it starts and once when
the device is back within its rate, with the count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bridge.exceptions import RateLimited
from bridge.ratelimit import limiter, refusal
from protocols.mqtt.events import MessageEvent
from protocols.mqtt.topics import InvalidTopic, Topics

logger = logging.getLogger(__name__)

MAX_STREAKS = 10_000  # devices tracked as "over their rate" at once; beyond, counts restart


@dataclass(frozen=True)
class Dropped:
    """The messages of one device dropped from one batch, and the error it is told."""

    device: str
    messages: list[MessageEvent]
    error: RateLimited


@dataclass
class Admission:
    topics: Topics
    dropped_total: int = 0
    _streaks: dict[str, int] = field(default_factory=dict)

    async def split(self, batch: list[MessageEvent]) -> tuple[list[MessageEvent], list[Dropped]]:
        """(admitted in arrival order, dropped per device)."""
        by_device: dict[str, list[MessageEvent]] = {}
        for message in batch:
            device = self._charged_device(message["topic"])
            if device is not None:
                by_device.setdefault(device, []).append(message)
        over: set[int] = set()
        dropped: list[Dropped] = []
        for device, messages in by_device.items():
            decision = await limiter("mqtt").atake(device, cost=len(messages))
            excess = messages[decision.granted:]
            self._record(device, len(excess))
            if excess:
                over.update(id(m) for m in excess)
                error = refusal("mqtt", decision)
                error.detail = f"{len(excess)} message(s) dropped. {error.detail}"
                dropped.append(Dropped(device, excess, error))
        return [m for m in batch if id(m) not in over], dropped

    def _charged_device(self, topic: str) -> str | None:
        """The device a message counts against; None for what is not a device's own publish."""
        try:
            kind, device, _ = self.topics.parse(topic)
        except InvalidTopic:
            return None  # refused further on, with its own error
        return None if kind == "bridge" else device  # our own errors/commands echoed back

    def _record(self, device: str, dropped: int) -> None:
        if dropped:
            self.dropped_total += dropped
            if device not in self._streaks:
                if len(self._streaks) >= MAX_STREAKS:
                    self._streaks.clear()
                logger.warning("device %s is over its rate: dropping its excess messages", device)
            self._streaks[device] = self._streaks.get(device, 0) + dropped
        elif device in self._streaks:
            logger.info("device %s is within its rate again; %d message(s) were dropped",
                        device, self._streaks.pop(device))
