"""Channels' worker plus a reconciler timer, so lost wake-ups only delay work."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from channels.worker import Worker
from django.conf import settings

from bridge.ops import ops_endpoint
from bridge.supervisor import Supervisor
from bridge.tasks.runner import STOPPING, wait_idle
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
                await self._listen_until_sigterm()
            finally:
                reconciler.cancel()
                await supervisor.stop()

    async def _listen_until_sigterm(self) -> None:
        """Channels' listeners, until SIGTERM: then claim nothing more and finish the task in hand.

        A task still running after BRIDGE_SHUTDOWN_GRACE seconds is left to its
        lease: the process exits, the database rolls its transaction back, and
        the reconciler of another worker requeues it when the lease runs out.
        """
        listeners = [asyncio.ensure_future(self.listener(channel)) for channel in self.channels]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([*listeners, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            STOPPING.set()
            for task in [*listeners, stopping]:
                task.cancel()
        for listener in listeners:
            error = listener.exception() if listener.done() and not listener.cancelled() else None
            if error is not None:
                raise error  # the channel layer failed: not a graceful stop
        logger.info("SIGTERM: no new tasks; waiting up to %s s for the one in hand",
                    settings.BRIDGE_SHUTDOWN_GRACE)
        if not await asyncio.to_thread(wait_idle, settings.BRIDGE_SHUTDOWN_GRACE):
            logger.warning("a task was still running after %s s; its lease hands it back",
                           settings.BRIDGE_SHUTDOWN_GRACE)

    async def reconcile_forever(self) -> None:
        """At start and then every BRIDGE_RECONCILE_INTERVAL seconds, ask for a sweep."""
        channel = settings.BRIDGE_TASKS_CHANNEL
        if channel not in self.channels:
            return
        while True:
            await self.channel_layer.send(channel, {"type": "tasks.reconcile"})
            await asyncio.sleep(settings.BRIDGE_RECONCILE_INTERVAL)
