"""`runmqtt`: the MQTT protocol server. Several may run side by side (shared subscriptions)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from bridge.ops import add_ops_argument, ops_endpoint
from protocols.mqtt.config import PRIVATE_ROOMS_OFF, MqttConfig
from protocols.mqtt.credentials import edge_topics
from protocols.mqtt.permission_sync import broker_permissions
from protocols.mqtt.server import MqttServer, MqttServerError
from protocols.mqtt.slots import PLACEHOLDER, ClientIdSlot, SlotLost


class Command(BaseCommand):
    help = "Connect to the MQTT broker (MQTT_URL) and bridge devices into the rooms."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--client-id",
            default=None,
            help="this process's MQTT client id (stable across restarts; distinct per process); "
            "with {slot} in it, the lowest free slot leased in Redis (replicas)",
        )
        add_ops_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.MQTT_URL:
            raise CommandError("MQTT_URL is not set (runbridge runs an embedded broker instead)")
        try:
            config = MqttConfig.from_url(settings.MQTT_URL, client_id=options["client_id"])
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        slot = None
        if PLACEHOLDER in config.client_id:
            if not settings.REDIS_URL:
                raise CommandError(f"an MQTT client id with {PLACEHOLDER} needs REDIS_URL (the leases)")
            slot = ClientIdSlot(settings.REDIS_URL, config.client_id)
        self.stdout.write(f"runmqtt: {config.broker} as {config.client_id}")
        if not config.dynsec:
            self.stdout.write(PRIVATE_ROOMS_OFF)
        self.stdout.flush()
        try:
            asyncio.run(self._main(config, options["ops_port"], slot))
        except KeyboardInterrupt:
            pass
        self.stdout.write("runmqtt stopped")

    async def _main(self, config: MqttConfig, ops_port: int | None, slot: ClientIdSlot | None) -> None:
        from project.asgi import application

        main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._server: MqttServer | None = None
        self._stopping: asyncio.Task[None] | None = None
        if main is not None:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm, main)
        try:
            async with ops_endpoint(ops_port), broker_permissions(config, edge_topics()):
                if slot is None:
                    self._server = MqttServer(application, config)
                    await self._server.run()
                else:
                    await self._run_in_slot(application, config, slot)
        except asyncio.CancelledError:
            pass
        except MqttServerError as exc:
            raise CommandError(str(exc)) from exc

    def _on_sigterm(self, main: asyncio.Task[None]) -> None:
        """The first SIGTERM drains the work in hand (at most BRIDGE_SHUTDOWN_GRACE
        seconds), then stops; a second one stops at once."""
        if self._stopping is not None or self._server is None:
            main.cancel()
            return
        self._stopping = asyncio.create_task(self._drain_then_stop(self._server, main))

    async def _drain_then_stop(self, server: MqttServer, main: asyncio.Task[None]) -> None:
        await server.drain(settings.BRIDGE_SHUTDOWN_GRACE)
        main.cancel()

    async def _run_in_slot(self, application: Any, config: MqttConfig, slot: ClientIdSlot) -> None:
        """The server under the slot's client id, for as long as the lease is ours."""
        try:
            config = dataclasses.replace(config, client_id=await slot.claim())
            self.stdout.write(f"runmqtt: client id {config.client_id}")
            self.stdout.flush()
            self._server = MqttServer(application, config)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._server.run())
                group.create_task(slot.keep())
        except* SlotLost as lost:
            raise CommandError(str(lost.exceptions[0])) from None
        finally:
            await slot.release()
