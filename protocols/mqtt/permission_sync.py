"""Keeps the broker's device permissions in step with the database (MQTT_DYNSEC on).

Runs beside the MQTT protocol server in `runmqtt` and `runbridge`:
- `first_sync()` before the server connects, so the bridge's own role (publish
  room messages, commands, errors) exists before it publishes anything;
- `run()` then applies `devices.changed` events (bridge.services.access, on
  the DEVICE_ACCESS_GROUP) within moments, and compares everything every
  MQTT_DYNSEC_RESYNC seconds (a lost event, a device deleted while no
  runmqtt ran). Several runmqtt may run it at once: every step is idempotent.

The database is read in a database thread, the broker is spoken to in a
worker thread (paho blocks); the event loop only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from bridge.health import HEALTH
from bridge.names import DEVICE_ACCESS_GROUP
from bridge.supervisor import Supervisor
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.dynsec import DynsecClient, DynsecError
from protocols.mqtt.permissions import DeviceGrant, apply, device_grants
from protocols.mqtt.topics import Topics

logger = logging.getLogger(__name__)

CHECK = "mqtt_permissions"
# Device ids gathered from events before one sync; more wait for the next (or the resync).
MAX_PENDING = 1000
RETRY_MIN, RETRY_MAX = 0.5, 30.0


class PermissionSync:
    def __init__(self, config: MqttConfig, topics: Topics, *, resync_interval: float) -> None:
        self.config = config
        self.topics = topics
        self.resync_interval = resync_interval
        self._pending: set[str] = set()

    async def sync(self, device_ids: set[str] | None = None) -> int:
        """One pass: every device (None) or the named ones. Returns how many commands it sent."""
        grants: list[DeviceGrant] = await database_sync_to_async(device_grants)(device_ids)
        sent: int = await asyncio.to_thread(self._apply, grants, device_ids)
        HEALTH.ok(CHECK)
        if sent:
            logger.info("broker permissions: %d change(s) for %s", sent,
                        "every device" if device_ids is None else ", ".join(sorted(device_ids)))
        return sent

    def _apply(self, grants: list[DeviceGrant], device_ids: set[str] | None) -> int:
        with DynsecClient.connected(self.config) as client:
            sent = apply(
                client, grants, topics=self.topics, bridge_user=self.config.username,
                everything=device_ids is None, named=device_ids or (),
            )
        return len(sent)

    async def first_sync(self) -> None:
        """Until one full pass succeeds: retried with back-off, each failure logged and reported."""
        pause = RETRY_MIN
        while True:
            try:
                await self.sync()
                return
            except (DynsecError, OSError) as exc:
                HEALTH.failing(CHECK, exc)
                logger.warning("broker permissions not applied yet (%s); retrying in %.1f s",
                               exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)

    async def run(self) -> None:
        """Apply change events as they come; everything every `resync_interval`.

        Meant for `Supervisor.run`: a failure raises, the supervisor logs it and
        starts this again (the full pass on restart catches up).
        """
        layer = get_channel_layer()
        channel = await layer.new_channel() if layer is not None else None
        # One receive kept pending across resyncs, never cancelled on a timeout: a blocking
        # Redis read cancelled as its reply arrives can swallow the cancellation (and lose
        # the event), so only stopping cancels it.
        receiving: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                if layer is not None and channel is not None:
                    # Re-joined every pass: Redis expires group membership after a day.
                    await layer.group_add(DEVICE_ACCESS_GROUP, channel)
                    if receiving is None:
                        receiving = asyncio.ensure_future(layer.receive(channel))
                    done, _ = await asyncio.wait({receiving}, timeout=self.resync_interval)
                    if done:
                        event, receiving = receiving.result(), None
                        self._take(event)
                else:
                    await asyncio.sleep(self.resync_interval)
                try:
                    if self._pending:
                        pending, self._pending = self._pending, set()
                        await self.sync(pending)
                    else:
                        await self.sync()
                except (DynsecError, OSError) as exc:
                    HEALTH.failing(CHECK, exc)
                    raise
        finally:
            if receiving is not None:
                receiving.cancel()
            if layer is not None and channel is not None:
                await layer.group_discard(DEVICE_ACCESS_GROUP, channel)

    def _take(self, event: dict[str, Any]) -> None:
        """A change event's devices wait for the next pass (at most MAX_PENDING)."""
        if event.get("type") == "devices.changed":
            room = MAX_PENDING - len(self._pending)
            self._pending.update(list(event.get("devices", []))[: max(room, 0)])


@contextlib.asynccontextmanager
async def broker_permissions(config: MqttConfig, topics: Topics) -> AsyncIterator[None]:
    """With MQTT_DYNSEC: one full pass before the body (the MQTT server) runs, then the
    supervised sync beside it. Without: nothing (the caller says what that means)."""
    if not config.dynsec:
        yield
        return
    sync = PermissionSync(config, topics, resync_interval=settings.MQTT_DYNSEC_RESYNC)
    await sync.first_sync()
    loops = Supervisor("mqtt")
    loops.run("permissions", sync.run, critical=True)
    try:
        yield
    finally:
        await loops.stop()
