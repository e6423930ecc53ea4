"""`runbridge [ADDR:]PORT`: every edge and the worker in one process (the quick start)."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bridge.embedded import EmbeddedContext, run_embedded

ADDRPORT = re.compile(r"^(?:(?P<addr>[^:\[\]]+|\[[0-9a-fA-F:]+\]):)?(?P<port>\d{1,5})$")


def parse_addrport(value: str) -> tuple[str, int]:
    match = ADDRPORT.fullmatch(value)
    if match is None:
        raise CommandError(f"{value!r} is not [ADDR:]PORT (for example 8000 or 0.0.0.0:8000)")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise CommandError(f"port {port} is out of range")
    return (match["addr"] or "127.0.0.1").strip("[]"), port


class Command(BaseCommand):
    help = "Run HTTP/WebSocket, the task worker and the MQTT/XMPP edges in one process."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument(
            "--mqtt-port", type=int, default=1883, help="port of the embedded MQTT broker"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = parse_addrport(options["addrport"])
        ctx = EmbeddedContext(host=host, port=port, mqtt_port=options["mqtt_port"])
        try:
            asyncio.run(self._main(ctx))
        except KeyboardInterrupt:
            pass
        self.stdout.write("bridge stopped")

    async def _main(self, ctx: EmbeddedContext) -> None:
        main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if main is not None:
            loop.add_signal_handler(signal.SIGTERM, main.cancel)

        def announce() -> None:
            layer = str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).rsplit(".", 1)[-1]
            db = str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1]
            self.stdout.write(self.style.SUCCESS("Bridge is running."))
            for line in ctx.banner:
                self.stdout.write(f"  {line}")
            self.stdout.write(f"  database: {db}, channel layer: {layer}")
            self.stdout.write("  stop with Ctrl-C")
            self.stdout.flush()

        try:
            await run_embedded(ctx, announce)
        except asyncio.CancelledError:
            pass
        except OSError as exc:
            raise CommandError(str(exc)) from exc
