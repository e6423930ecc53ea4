"""Per-device rate limits on what devices publish: a batch split into admitted and dropped.

A device over its rate (MQTT_RATE per second, MQTT_BURST at once; see
bridge/ratelimit.py) has its excess messages acknowledged and dropped before
they reach the database, so one flooding device costs the others almost
nothing. Each batch asks the limiter once per device, for all of that device's
messages in it. A streak of drops is logged once when it starts and once when
the device is back within its rate, with the count.

While a device is known to have no token (until the `retry_after` of its last
refusal), `shed` drops its messages as they arrive, before they queue up for
the writer: a flood then costs a dictionary lookup per message and no longer
delays the other devices' messages behind it. Those drops are told at most
once a second per device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge import instruments
from bridge.exceptions import RateLimited
from bridge.ratelimit import Decision, limiter, refusal
from protocols.mqtt.events import MessageEvent
from protocols.mqtt.topics import InvalidTopic, Topics

logger = logging.getLogger(__name__)

MAX_STREAKS = 10_000  # devices tracked as "over their rate" at once; beyond, counts restart
TELL_EVERY = 1.0  # seconds between errors to a device whose messages are shed on arrival


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
    clock: Callable[[], float] = time.monotonic
    _streaks: dict[str, int] = field(default_factory=dict)
    _empty_until: dict[str, float] = field(default_factory=dict)
    _shed: dict[str, tuple[float, int]] = field(default_factory=dict)  # device: (last told, untold)

    def shed(self, message: MessageEvent) -> tuple[bool, Dropped | None]:
        """(drop it now, the error to send now) for a message of a device with no token left."""
        device = self._charged_device(message["topic"])
        if device is None:
            return False, None
        now = self.clock()
        until = self._empty_until.get(device)
        if until is None or now >= until:
            self._empty_until.pop(device, None)
            return False, None
        self._record(device, 1)
        if device not in self._shed and len(self._shed) >= MAX_STREAKS:
            self._shed.clear()
        told, untold = self._shed.get(device, (0.0, 0))
        if now - told < TELL_EVERY:
            self._shed[device] = (told, untold + 1)
            return True, None
        self._shed[device] = (now, 0)
        error = refusal("mqtt", Decision(granted=0, cost=1, retry_after=until - now))
        error.detail = f"{untold + 1} message(s) dropped. {error.detail}"
        return True, Dropped(device, [message], error)

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
                if len(self._empty_until) >= MAX_STREAKS:
                    self._empty_until.clear()
                self._empty_until[device] = self.clock() + decision.retry_after
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
            instruments.dropped_over_rate("mqtt", dropped)
            if device not in self._streaks:
                if len(self._streaks) >= MAX_STREAKS:
                    self._streaks.clear()
                logger.warning("device %s is over its rate: dropping its excess messages", device)
            self._streaks[device] = self._streaks.get(device, 0) + dropped
        elif device in self._streaks:
            logger.info("device %s is within its rate again; %d message(s) were dropped",
                        device, self._streaks.pop(device))
