"""Channels' worker plus a reconciler timer, so lost wake-ups only delay work."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.worker import Worker
from django.conf import settings

from bridge.ops import ops_endpoint

logger = logging.getLogger(__name__)


class BridgeWorker(Worker):
    def __init__(self, *args: Any, ops_port: int | None = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ops_port = ops_port  # None: the OPS_PORT setting; 0: no ops endpoint

    async def handle(self) -> None:
        async with ops_endpoint(self.ops_port):
            reconciler = asyncio.ensure_future(self.reconcile_forever())
            try:
                await super().handle()
            finally:
                reconciler.cancel()

    async def reconcile_forever(self) -> None:
        """At start and then every BRIDGE_RECONCILE_INTERVAL seconds, ask for a sweep."""
        channel = settings.BRIDGE_TASKS_CHANNEL
        if channel not in self.channels:
            return
        while True:
            await self.channel_layer.send(channel, {"type": "tasks.reconcile"})
            await asyncio.sleep(settings.BRIDGE_RECONCILE_INTERVAL)
