"""Channels' worker that outlives its channel layer, with the task loop and the reconciler.

Everything runs under one `Supervisor` ("worker"): the listener of each
channel (channels' own listener ends the whole process on the first failed
receive; ours is restarted with back-off and reported), the task loop
(`TaskScheduler`) and the reconciler, which runs on a timer of its own and
reaches the database directly, never through a channel-layer message; on the
telemetry channel, the telemetry sweep and retention.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from typing import Any

from channels.db import database_sync_to_async
from channels.worker import Worker
from django.conf import settings

from bridge.health import HEALTH
from bridge.layer import layer_failed
from bridge.ops import ops_endpoint
from bridge.probes import CHANNEL_LAYER
from bridge.supervisor import Supervisor
from bridge.tasks.reconcile import reconcile
from bridge.tasks.runner import STOPPING, wait_idle
from bridge.tasks.scheduler import TaskScheduler
from bridge.tasks.telemetry import telemetry_retention, telemetry_sweep

logger = logging.getLogger(__name__)

RETENTION_INTERVAL = 60.0  # seconds between retention passes of a telemetry worker


class BridgeWorker(Worker):
    def __init__(
        self, *args: Any, ops_port: int | None = 0, own_sigterm: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ops_port = ops_port  # None: the OPS_PORT setting; 0: no ops endpoint
        # runworker owns the process's SIGTERM; inside runbridge the command does
        # (a second handler would replace runbridge's, which stops every service).
        self.own_sigterm = own_sigterm
        self.scheduler = TaskScheduler()
        # Back-off capped at 2 s: a listener is back within seconds of Redis.
        self.supervisor = Supervisor("worker", backoff_max=2.0)

    async def handle(self) -> None:
        async with ops_endpoint(self.ops_port):
            for channel in self.channels:
                self.supervisor.run(
                    f"listen.{channel}", functools.partial(self.listener, channel), critical=True
                )
            if settings.BRIDGE_TASKS_CHANNEL in self.channels:
                self.supervisor.run("tasks", self.scheduler.run)
                self.supervisor.every(
                    "reconcile", settings.BRIDGE_RECONCILE_INTERVAL, self.reconcile_once
                )
            if settings.BRIDGE_TELEMETRY_CHANNEL in self.channels:
                # Run here, not through the channel: a sweep that a lost message cannot skip.
                self.supervisor.every(
                    "telemetry-sweep", settings.TELEMETRY_SWEEP_INTERVAL, telemetry_sweep
                )
                self.supervisor.every("telemetry-retention", RETENTION_INTERVAL,
                                      telemetry_retention, first_delay=RETENTION_INTERVAL)
            try:
                await self._until_sigterm()
            finally:
                await self.supervisor.stop()

    async def _until_sigterm(self) -> None:
        """Until SIGTERM: then claim nothing more and finish the task in hand.

        A task still running after BRIDGE_SHUTDOWN_GRACE seconds is left to its
        lease: the process exits, the database rolls its transaction back, and
        another worker takes it over when the lease runs out.
        """
        stop = asyncio.Event()
        if self.own_sigterm:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        STOPPING.set()
        logger.info("SIGTERM: no new tasks; waiting up to %s s for the one in hand",
                    settings.BRIDGE_SHUTDOWN_GRACE)
        if not await asyncio.to_thread(wait_idle, settings.BRIDGE_SHUTDOWN_GRACE):
            logger.warning("a task was still running after %s s; its lease hands it back",
                           settings.BRIDGE_SHUTDOWN_GRACE)

    async def listener(self, channel: str) -> None:
        """Channels' listener; the scope carries this worker's task loop for TaskConsumer."""
        scope = {"type": "channel", "channel": channel, "tasks": self.scheduler}
        while True:
            try:
                message = await self.channel_layer.receive(channel)
            except Exception as exc:
                layer_failed(exc, f"receive on {channel}")
                raise
            HEALTH.ok(CHANNEL_LAYER)
            if not message.get("type"):
                logger.warning("dropping a message without a type on %s", channel)
                continue
            queue = self.get_or_create_application_instance(channel, scope)
            await queue.put(message)

    async def reconcile_once(self) -> None:
        """Requeue orphaned tasks, expire dead presence, schedule retention; then run what is due."""
        await database_sync_to_async(reconcile)()
        self.scheduler.wake()
