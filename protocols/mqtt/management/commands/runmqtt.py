"""`runmqtt`: the MQTT protocol server. Several may run side by side (shared subscriptions)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from bridge.ops import add_ops_argument, ops_endpoint
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import MqttServer, MqttServerError


class Command(BaseCommand):
    help = "Connect to the MQTT broker (MQTT_URL) and bridge devices into the rooms."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--client-id",
            default=None,
            help="this process's MQTT client id (stable across restarts; distinct per process)",
        )
        add_ops_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.MQTT_URL:
            raise CommandError("MQTT_URL is not set (runbridge runs an embedded broker instead)")
        try:
            config = MqttConfig.from_url(settings.MQTT_URL, client_id=options["client_id"])
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"runmqtt: {config.broker} as {config.client_id}")
        self.stdout.flush()
        try:
            asyncio.run(self._main(config, options["ops_port"]))
        except KeyboardInterrupt:
            pass
        self.stdout.write("runmqtt stopped")

    async def _main(self, config: MqttConfig, ops_port: int | None) -> None:
        from project.asgi import application

        main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if main is not None:
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
        try:
            async with ops_endpoint(ops_port):
                await MqttServer(application, config).run()
        except asyncio.CancelledError:
            pass
        except MqttServerError as exc:
            raise CommandError(str(exc)) from exc
