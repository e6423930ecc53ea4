"""The `bridge-telemetry` channel: rollups, alerts and retention, apart from chat tasks.

The MQTT edge stores readings and sends `telemetry.wake` here after its commit;
a wake-up rolls up everything pending, batch by batch. Losing a wake-up only
delays the work: every worker on this channel also sweeps every
TELEMETRY_SWEEP_INTERVAL seconds (under the process's supervisor), which is
also when `silent` rules notice quiet devices.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from bridge import layer
from bridge.envelope import Envelope
from bridge.names import devices_group
from bridge.services.alerts import alerts_check_silence
from bridge.services.messages import message_fanout
from bridge.services.telemetry import RollupResult, telemetry_prune, telemetry_roll_up

logger = logging.getLogger(__name__)

# Batches one wake-up rolls up at most before it lets other messages in (a backlog
# is finished by the next wake-up or sweep).
MAX_BATCHES = 50


def _silence() -> list[Envelope]:
    with transaction.atomic():
        return alerts_check_silence()


async def telemetry_work(*, silence: bool = True) -> int:
    """Roll up what is pending, tell rooms of alerts and pages of new readings; how many.

    `silence`: judge the `silent` rules too (every sweep, and when a status changed;
    not for every batch of readings, which would query them hundreds of times a second).
    """
    total = 0
    for _ in range(MAX_BATCHES):
        result: RollupResult = await database_sync_to_async(telemetry_roll_up)()
        total += result.readings
        for envelope in result.alerts:
            await message_fanout(envelope)
        await _send_live(result)
        if result.readings < settings.TELEMETRY_BATCH:
            break
    if silence:
        for envelope in await database_sync_to_async(_silence)():
            await message_fanout(envelope)
    return total


async def _send_live(result: RollupResult) -> None:
    """New readings to the pages showing the devices' rooms. At most once, like chat."""
    for device, metrics in result.latest.items():
        for slug in result.rooms.get(device, ()):
            event = {"type": "devices.telemetry", "device": device, "metrics": metrics, "room": slug}
            if not await layer.group_send(devices_group(slug), event):
                # Stored already: a page catches up from the API.
                logger.info("could not send live readings of %s", device)
                return


async def telemetry_sweep() -> None:
    """The periodic pass: what lost wake-ups left, and silent devices."""
    await telemetry_work()


async def telemetry_retention() -> None:
    await database_sync_to_async(telemetry_prune)()


class TelemetryConsumer(AsyncConsumer):
    """Routed by `ChannelNameRouter`; runs in `runworker bridge-telemetry` (and runbridge)."""

    async def telemetry_wake(self, message: dict[str, Any]) -> None:
        await telemetry_work(silence=bool(message.get("status")))
