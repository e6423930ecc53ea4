"""The ops endpoint: /healthz alive, /readyz from the health registry, clear errors otherwise."""

from __future__ import annotations

import asyncio
import json

from bridge.health import Health
from bridge.ops import OpsServer, Response, health_routes


async def fetch(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_healthz_is_alive_and_readyz_follows_the_registry() -> None:
    health = Health()
    server = OpsServer(host="127.0.0.1", port=0, routes=health_routes(health, probe=False))
    await server.start()
    try:
        status, _, body = await fetch(server.port, get("/healthz"))
        assert status == 200 and json.loads(body) == {"status": "ok"}
        health.ok("channel_layer")
        status, _, body = await fetch(server.port, get("/readyz"))
        assert status == 200 and json.loads(body)["checks"]["channel_layer"]["ok"] is True
        health.failing("channel_layer", ConnectionError("Connection refused"))
        status, headers, body = await fetch(server.port, get("/readyz?verbose=1"))
        answer = json.loads(body)
        assert status == 503 and headers["Content-Type"] == "application/json"
        assert answer["status"] == "unavailable"
        check = answer["checks"]["channel_layer"]
        assert check["ok"] is False and check["detail"] == "Connection refused"
        assert check["for_seconds"] >= 0 and check["last_ok_seconds_ago"] >= 0
        # A failing check that is not critical (housekeeping) does not make it unready.
        health.ok("channel_layer")
        health.failing("loop:worker.reconcile", "TimeoutError", critical=False)
        status, _, _ = await fetch(server.port, get("/readyz"))
        assert status == 200
        # Still alive, whatever the dependencies say.
        health.failing("database", "gone")
        status, _, _ = await fetch(server.port, get("/healthz"))
        assert status == 200
    finally:
        await server.stop()


async def test_other_paths_methods_and_garbage_get_json_errors() -> None:
    server = OpsServer(host="127.0.0.1", port=0, routes=health_routes(Health(), probe=False))
    await server.start()
    try:
        status, _, body = await fetch(server.port, get("/nope"))
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        status, _, body = await fetch(server.port, get("/readyz", method="POST"))
        assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"
        status, _, body = await fetch(server.port, b"hello\r\n\r\n")
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
        status, _, body = await fetch(server.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        assert status == 400
        status, headers, body = await fetch(server.port, get("/healthz", method="HEAD"))
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    finally:
        await server.stop()


async def test_a_route_is_one_entry_in_the_dict() -> None:
    async def metrics() -> Response:
        return Response(200, b"up 1\n", content_type="text/plain; version=0.0.4")

    server = OpsServer(host="127.0.0.1", port=0, routes={**health_routes(Health(), probe=False), "/metrics": metrics})
    await server.start()
    try:
        status, headers, body = await fetch(server.port, get("/metrics"))
        assert status == 200 and body == b"up 1\n" and headers["Content-Type"].startswith("text/plain")
    finally:
        await server.stop()
