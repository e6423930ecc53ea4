"""The ops endpoint of a process without HTTP of its own (runmqtt, runxmpp, runworker).

A tiny HTTP/1.1 server on asyncio, for a container healthcheck or a load
balancer on a private port: GET `/healthz` (200 while the process runs: alive)
and `/readyz` (the dependencies, probed live, and every supervised loop, from
`HEALTH`; 503 while not ready). Off unless a port is given (`OPS_PORT` or the
command's `--ops-port`); it listens on `OPS_HOST` (loopback by default).

Add a path by adding a handler to `routes` (a dict of path to an async
function returning a `Response`); every request is one line, a few headers,
and one answer, then the connection closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from django.conf import settings

from bridge.health import HEALTH, Health
from bridge.instruments import render
from bridge.probes import aprobe_all

logger = logging.getLogger(__name__)

READ_TIMEOUT = 5.0  # seconds for a client to send its request
MAX_HEADER_BYTES = 8192  # an ops request is a line and a few headers; more is not one


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: object) -> Response:
        return cls(status, json.dumps(data).encode())


Handler = Callable[[], Awaitable[Response]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}


def metrics_routes() -> dict[str, Handler]:
    """`/metrics`: this process's Prometheus metrics (the ops port is private by deployment)."""

    async def metrics() -> Response:
        body, content_type = await asyncio.to_thread(render)
        return Response(200, body, content_type)

    return {"/metrics": metrics}


def health_routes(health: Health = HEALTH, *, probe: bool = True) -> dict[str, Handler]:
    """`/healthz` and `/readyz`; `probe=False` reads the registry only (no database, no Redis)."""

    async def healthz() -> Response:
        return Response.json(200, {"status": "ok"})

    async def readyz() -> Response:
        if probe:
            await aprobe_all(health)
        return Response.json(200 if health.ready() else 503, health.as_json())

    return {"/healthz": healthz, "/readyz": readyz}


class OpsServer:
    """Serve `routes` on host:port until `stop()`; port 0 picks a free one (see `port` after start)."""

    def __init__(self, *, host: str, port: int, routes: dict[str, Handler] | None = None) -> None:
        self.host = host
        self.port = port
        self.routes: dict[str, Handler] = routes if routes is not None else health_routes()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEADER_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("ops endpoint on http://%s:%s/ (%s)", self.host, self.port, ", ".join(self.routes))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, head_only = await self._answer(reader)
            reason = REASONS.get(response.status, "")
            head = (
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if head_only else head + response.body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or never asked: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return _error(400, "bad_request", "Request head too large."), False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return _error(400, "bad_request", "Not an HTTP request line."), False
        method, target, _ = parts
        handler = self.routes.get(target.split("?", 1)[0])
        if handler is None:
            return _error(404, "not_found", f"Try {', '.join(self.routes)}."), False
        if method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "Use GET or HEAD."), False
        return await handler(), method == "HEAD"


def _error(status: int, code: str, detail: str) -> Response:
    return Response.json(status, {"error": {"code": code, "detail": detail}})


def add_ops_argument(parser: argparse.ArgumentParser) -> None:
    """`--ops-port` for a command that runs a process (default: the OPS_PORT setting)."""
    parser.add_argument(
        "--ops-port",
        type=int,
        default=None,
        help="serve /healthz and /readyz on this port (OPS_HOST, loopback by default); 0: off",
    )


@contextlib.asynccontextmanager
async def ops_endpoint(port: int | None) -> AsyncIterator[OpsServer | None]:
    """The process's ops endpoint while the block runs; none when the port is 0 (off)."""
    port = settings.OPS_PORT if port is None else port
    if not port:
        yield None
        return
    server = OpsServer(host=settings.OPS_HOST, port=port, routes={**health_routes(), **metrics_routes()})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
