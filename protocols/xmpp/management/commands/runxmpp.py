"""`runxmpp`: the XMPP protocol server, connected to the XMPP server as a component."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bridge.ops import add_ops_argument, ops_endpoint
from protocols.xmpp.config import HOW_TO_ENABLE, XmppConfig, xmpp_config
from protocols.xmpp.server import XmppServer


class Command(BaseCommand):
    help = "Run the XMPP protocol server: bridges every public room to a multi-user chat."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_ops_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        config = xmpp_config()
        if config is None:
            raise CommandError(HOW_TO_ENABLE)
        if str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).endswith("InMemoryChannelLayer"):
            self.stderr.write(
                "warning: no REDIS_URL: this process hears only its own messages "
                "(use runbridge for one process, or set REDIS_URL)"
            )
        from project.asgi import application

        self.stdout.write(
            f"xmpp: component {config.component} on {config.host}:{config.port}, "
            f"rooms on {config.muc_service}"
        )
        self.stdout.flush()
        try:
            asyncio.run(self._main(application, config, options["ops_port"]))
        except KeyboardInterrupt:
            pass
        self.stdout.write("xmpp stopped")

    async def _main(self, application: Any, config: XmppConfig, ops_port: int | None) -> None:
        # slixmpp binds to the running loop: build the server inside it.
        server = XmppServer(application=application, config=config)
        main = asyncio.current_task()
        if main is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        try:
            async with ops_endpoint(ops_port):
                await server.run()
        except asyncio.CancelledError:
            pass
