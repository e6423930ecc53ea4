"""HTTP and WebSocket inside `runbridge`, on uvicorn (measured faster than Daphne)."""

from __future__ import annotations

import socket

import uvicorn
from django.conf import settings

from bridge.embedded import EmbeddedContext
from protocols.websocket.lifecycle import GracefulServer
from protocols.websocket.server import WS_PROTOCOL

# Frames above BRIDGE_MAX_FRAME get an error frame from the consumer; this is the
# hard ceiling where the server closes the connection (1009) to protect memory.
WS_HARD_LIMIT = 1024 * 1024


async def serve(ctx: EmbeddedContext) -> None:
    from project.asgi import application

    config = uvicorn.Config(
        application,
        host=ctx.host,
        port=ctx.port,
        lifespan="off",
        ws=WS_PROTOCOL,
        ws_per_message_deflate=settings.WEBSOCKET_COMPRESSION,
        ws_max_size=WS_HARD_LIMIT,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
    )
    # Bind here so a busy port is a clear error, not uvicorn's sys.exit inside a task.
    family = socket.AF_INET6 if ":" in ctx.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ctx.host, ctx.port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen on {ctx.host}:{ctx.port}: {exc.strerror} (choose another address: "
            f"runbridge {ctx.host}:{ctx.port + 1}, or make run ADDR={ctx.host}:{ctx.port + 1})"
        ) from exc
    config.load()
    server = GracefulServer(config)
    server.lifespan = config.lifespan_class(config)
    ctx.banner.insert(0, f"web: http://{ctx.host}:{ctx.port}/")
    await server.startup(sockets=[sock])
    ctx.started()
    try:
        await server.main_loop()
    finally:
        await server.shutdown(sockets=[sock])
