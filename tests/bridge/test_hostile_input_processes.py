"""Hostile input over HTTP, WebSocket and MQTT against real processes, on SQLite and PostgreSQL.

uvicorn and runmqtt on a Redis channel layer (msgpack is what once could not carry
2**64) and mosquitto. Every refusal is the edge's error, never a 500 or HTML or a
dropped socket; nothing invalid is stored; the largest integer kept is delivered.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.http import login_cookie
from tests.support.mosquitto import mosquitto_server
from tests.support.mqtt_device import TestDevice
from tests.support.postgres import postgres_server
from tests.support.processes import Proc, free_port, query, start_manage
from tests.support.stack import Stack, provision

pytestmark = pytest.mark.slow

NESTED = '{"a":' * 970 + "1" + "}" * 970
# (raw JSON body, the error code), for HTTP bodies, WebSocket frames and MQTT payloads alike.
HOSTILE = [
    ('{"text": "a\\u0000b"}', "invalid_json"),
    ('{"text": "hi", "client_id": "k\\u0000"}', "invalid_json"),
    ('{"text": "hi", "data": {"x": "\\u0000"}}', "invalid_json"),
    ('{"text": "\\ud800"}', "invalid_json"),
    ('{"text": "hi", "data": {"k\\udfff": 1}}', "invalid_json"),
    ('{"text": "hi", "data": ' + NESTED + "}", "invalid_json"),
    ('{"text": "hi", "data": {"n": 18446744073709551616}}', "invalid_json"),
    ('{"text": "hi", "data": {"n": 1e400}}', "invalid_json"),
    ('{"text": "bell \\u0007"}', "invalid_text"),
]
BIG = {"n": 2**63 - 1, "m": -(2**63)}


@pytest.fixture(params=["sqlite", "postgres"])
def edges(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[tuple[Stack, str, int]]:
    procs: list[Proc] = []
    env: dict[str, str] = {}
    if request.param == "postgres":
        pg = postgres_server(tmp_path)
        procs.append(pg)
        env["DATABASE_URL"] = str(pg.extra["url"])
    broker = mosquitto_server(tmp_path / "mosquitto", {"sensor-1": "pw"})
    stack = provision(tmp_path, MQTT_URL=broker.bridge_url, MQTT_UNKNOWN_DEVICES="register", REDIS_URL=redis_url, **env)
    try:
        base = stack.asgi("web")
        ops = free_port()
        mqtt = start_manage("runmqtt", ["runmqtt", "--client-id", "bridge-hostile", "--ops-port", str(ops)], env=stack.env, log_dir=tmp_path)
        stack.procs.append(mqtt)
        wait_ready(f"http://127.0.0.1:{ops}/readyz", mqtt)
        yield stack, base, broker.port
    finally:
        stack.stop()
        broker.stop()
        for proc in procs:
            proc.stop()
            shutil.rmtree(str(proc.extra["cleanup"]), ignore_errors=True)


def wait_ready(url: str, proc: Proc, timeout: float = 60) -> None:
    """Until the process's /readyz says 200 (connected and subscribed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, proc.output()
        if get(url)[0] == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready:\n{proc.output()}")


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, "", b""


def stored_texts(stack: Stack) -> list[str]:
    return [str(row[0]) for row in query(stack.database_url, "SELECT text FROM bridge_message ORDER BY seq")]


async def frame_of(sock: Any, *kinds: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(sock.recv(), timeout=15))
        if frame["type"] in kinds:
            return frame


def test_hostile_input_on_every_edge_gets_its_error_and_stores_nothing(edges: tuple[Stack, str, int]) -> None:
    stack, base, mqtt_port = edges
    auth = {"Authorization": f"Token {stack.token}"}
    url = f"{base}/api/rooms/lobby/messages"

    # --- HTTP -------------------------------------------------------------------------------
    for body, code in HOSTILE:
        status, kind, raw = raw_post(url, body.encode("utf-8", "surrogatepass"), auth)
        assert (status, kind, json.loads(raw)["error"]["code"]) == (400, "application/json", code), body[:60]
    status, kind, raw = raw_post(url, b'{"text": "' + b"x" * (5 * 1024 * 1024) + b'"}', auth)
    assert (status, kind, json.loads(raw)["error"]["code"]) == (413, "application/json", "too_large")
    for path in ("/api/nothing", f"/api/rooms/lobby/messages?after={2**64}", "/api/rooms/%00/messages"):
        status, kind, raw = get(base + path)
        assert status in (400, 404) and kind == "application/json" and "error" in json.loads(raw), path
    assert stored_texts(stack) == []

    # --- WebSocket ----------------------------------------------------------------------------
    async def websocket_side() -> list[dict[str, Any]]:
        cookie = login_cookie(base, "demo", "demo")
        ws_base = base.replace("http://", "ws://")
        headers = {"Origin": base, "Cookie": cookie}
        async with websockets.connect(f"{ws_base}/ws/rooms/lobby/", additional_headers=headers, max_size=2**22) as sock:
            await frame_of(sock, "history")
            codes = []
            for body, _ in HOSTILE:
                await sock.send('{"type": "message", ' + body[1:])
                codes.append((await frame_of(sock, "error"))["code"])
            assert codes == [code for _, code in HOSTILE]
            # The largest integer kept goes through the Redis channel layer (msgpack) to everyone.
            await sock.send(json.dumps({"type": "message", "text": "big", "data": BIG, "client_id": "big"}))
            assert (await frame_of(sock, "ack"))["client_id"] == "big"
            delivered = await frame_of(sock, "message")
        async with websockets.connect(f"{ws_base}/ws/rooms/secret/..", additional_headers={"Origin": base}) as junk:
            refused = json.loads(await asyncio.wait_for(junk.recv(), timeout=15))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(junk.recv(), timeout=15)
        assert refused["code"] == "not_found" and closed.value.rcvd is not None and closed.value.rcvd.code == 4404
        return [delivered]

    (delivered,) = asyncio.run(websocket_side())
    assert delivered["message"]["data"] == BIG
    assert stored_texts(stack) == ["big"]

    # --- MQTT ---------------------------------------------------------------------------------
    device = TestDevice(mqtt_port, "sensor-1", "pw")
    try:
        device.subscribe("devices/sensor-1/errors", "rooms/lobby/messages")
        for payload, code in HOSTILE:
            device.publish("devices/sensor-1/rooms/lobby", payload.encode("utf-8", "surrogatepass"))
            assert json.loads(device.expect("devices/sensor-1/errors"))["code"] == code, payload[:60]
        device.publish("devices/sensor-1/rooms/lobby", json.dumps({"text": "big too", "data": BIG}))
        while (envelope := json.loads(device.expect("rooms/lobby/messages")))["text"] != "big too":
            pass
        assert envelope["data"] == BIG
    finally:
        device.close()
    assert stored_texts(stack) == ["big", "big too"]
    for proc in stack.procs:
        assert proc.popen.poll() is None, proc.output()
        assert "Traceback" not in proc.output() and "Internal Server Error" not in proc.output(), proc.output()
