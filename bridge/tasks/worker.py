"""Channels' worker plus a reconciler timer, so lost wake-ups only delay work."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.worker import Worker
from django.conf import settings

from bridge.ops import ops_endpoint
from bridge.supervisor import Supervisor
from bridge.tasks.telemetry import telemetry_retention, telemetry_sweep

logger = logging.getLogger(__name__)

RETENTION_INTERVAL = 60.0  # seconds between retention passes of a telemetry worker


class BridgeWorker(Worker):
    def __init__(self, *args: Any, ops_port: int | None = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ops_port = ops_port  # None: the OPS_PORT setting; 0: no ops endpoint

    async def handle(self) -> None:
        async with ops_endpoint(self.ops_port):
            reconciler = asyncio.ensure_future(self.reconcile_forever())
            supervisor = Supervisor("worker")
            if settings.BRIDGE_TELEMETRY_CHANNEL in self.channels:
                # Run here, not through the channel: a sweep that a lost message cannot skip.
                supervisor.every(
                    "telemetry-sweep", settings.TELEMETRY_SWEEP_INTERVAL, telemetry_sweep
                )
                supervisor.every("telemetry-retention", RETENTION_INTERVAL, telemetry_retention,
                                 first_delay=RETENTION_INTERVAL)
            try:
                await super().handle()
            finally:
                reconciler.cancel()
                await supervisor.stop()

    async def reconcile_forever(self) -> None:
        """At start and then every BRIDGE_RECONCILE_INTERVAL seconds, ask for a sweep."""
        channel = settings.BRIDGE_TASKS_CHANNEL
        if channel not in self.channels:
            return
        while True:
            await self.channel_layer.send(channel, {"type": "tasks.reconcile"})
            await asyncio.sleep(settings.BRIDGE_RECONCILE_INTERVAL)
