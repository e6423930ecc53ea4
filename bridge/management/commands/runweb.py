"""`runweb [ADDR:PORT]`: the production web process (HTTP and WebSocket on uvicorn).

The same as `uvicorn project.asgi:application` with the project's limits, plus
a graceful stop: on SIGTERM it takes no new connections, closes every
WebSocket with 1001 (going away: clients reconnect to another replica), and
gives HTTP requests in flight BRIDGE_SHUTDOWN_GRACE seconds.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from protocols.websocket.embedded import WS_HARD_LIMIT
from protocols.websocket.lifecycle import GracefulServer
from protocols.websocket.server import WS_PROTOCOL


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with uvicorn; SIGTERM closes WebSockets with 1001."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000", help="default 127.0.0.1:8000")
        parser.add_argument(
            "--forwarded-allow-ips", default="127.0.0.1",
            help="proxies whose X-Forwarded-For/-Proto are trusted (comma-separated, or *)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, _, port = options["addrport"].rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"expected ADDR:PORT, got {options['addrport']!r}")
        config = uvicorn.Config(
            "project.asgi:application",
            host=host.strip("[]"),
            port=int(port),
            lifespan="off",
            ws=WS_PROTOCOL,
            ws_per_message_deflate=settings.WEBSOCKET_COMPRESSION,
            ws_max_size=WS_HARD_LIMIT,
            proxy_headers=True,
            forwarded_allow_ips=options["forwarded_allow_ips"],
            timeout_graceful_shutdown=settings.BRIDGE_SHUTDOWN_GRACE,
            log_config=None,  # Django's LOGGING (LOG_FORMAT) applies to uvicorn's loggers too
        )
        GracefulServer(config).run()
