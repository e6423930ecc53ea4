"""docker-compose.yml's topology, run by the `make stack` generator, end to end.

A device publishes through mosquitto with its own credentials (QoS 1, JSON
ids); a WebSocket client and an XMPP client both receive every message, and
PostgreSQL holds each exactly once, while one runmqtt and one runworker are
stopped with SIGTERM and the other pair killed with SIGKILL mid-stream (each
restarted, as the compose restart policy would). Then each process's metrics
agree with a burst sent to a healthy stack, and /readyz follows Redis. The
WebSocket client connects through nginx with the compose file's own config.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mqtt_device import TestDevice
from tests.support.processes import query
from tests.support.topology import LocalStack
from tests.xmpp.client import XmppTestClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BRIDGE = ["web-1", "web-2", "worker-1", "worker-2", "mqtt-1", "mqtt-2", "xmpp"]
WEB = ("web-1", "web-2")
FIRST, SECOND = 150, 30


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack.create(tmp_path, environment={
        # Timing knobs only: a test cannot wait for production's leases and sweeps.
        "BRIDGE_TASK_LEASE": "5", "BRIDGE_RECONCILE_INTERVAL": "1", "MQTT_RECONNECT_MAX": "2",
        "BRIDGE_SHUTDOWN_GRACE": "5", "LOG_FORMAT": "json",
    })
    try:
        stack.start_all()
        stack.wait_healthy("postgres", "redis", "mosquitto", "prosody", *BRIDGE, "proxy")
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(stack.plan.state, ignore_errors=True)


def http(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(url: str, name: str, **labels: str) -> float:
    status, text = http(url)
    assert status == 200, (url, status, text[:300])
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metrics_url(stack: LocalStack, name: str) -> str:
    process = stack.process(name)
    port = 8000 if process.service == "web" else 9100
    return f"http://{process.address}:{port}/metrics"


class Receivers:
    """A WebSocket client behind the proxy and an XMPP client in the room, collecting texts."""

    def __init__(self) -> None:
        self.web: list[dict[str, Any]] = []
        self.xmpp: list[str] = []

    async def websocket(self, url: str, ready: asyncio.Event) -> None:
        origin = url.replace("ws://", "http://").split("/ws/")[0]  # the page's own origin
        async with websockets.connect(url, additional_headers={"Origin": origin}) as sock:
            while True:
                frame = json.loads(await sock.recv())
                if frame["type"] == "history":
                    ready.set()
                elif frame["type"] == "message":
                    self.web.append(frame["message"])

    async def xmpp_client(self, client: XmppTestClient, room: str) -> None:
        while True:
            seen = await client.inbox.get()
            if seen.kind == "groupchat" and seen.sender.startswith(room) and not seen.delayed:
                self.xmpp.append(seen.body)


async def until(predicate: Any, what: str, *, timeout: float = 120) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def publish_paced(device: TestDevice, first: int, count: int, *, per_second: float) -> None:
    for i in range(first, first + count):
        payload = json.dumps({"id": f"m{i}", "text": f"reading {i}"})
        device.publish("devices/sensor-1/rooms/lobby", payload).wait_for_publish(timeout=30)
        time.sleep(1 / per_second)


def stored(stack: LocalStack) -> list[tuple[Any, ...]]:
    return query(
        stack.process("web-1").env["DATABASE_URL"],
        "SELECT m.text, m.idempotency_key FROM bridge_message m JOIN bridge_identity i ON i.id = m.sender_id "
        "WHERE i.kind = 'device' AND i.name = 'sensor-1'",
    )


async def test_the_compose_topology_end_to_end(stack: LocalStack) -> None:
    stack.topology("run", "manage", "rooms", "add", "lobby")
    # The device and its broker client (the bridge sets its permissions: MQTT_DYNSEC=1).
    stack.topology("run", "manage", "devices", "add", "sensor-1", "--room", "lobby", "--password", "sensor-pw")
    stack.topology("exec", "prosody", "prosodyctl", "register", "alice", "localhost", "alice-pw")

    web, prosody, proxy = stack.process("web-1"), stack.process("prosody"), stack.process("proxy")
    domain = prosody.env["XMPP_DOMAIN"]
    room = f"lobby@{prosody.env['XMPP_MUC_SERVICE']}"
    receivers = Receivers()
    ready = asyncio.Event()
    # Through the one entry point (nginx, the compose file's config): the upgrade passes.
    watchers = [asyncio.ensure_future(receivers.websocket(f"ws://{proxy.address}:8080/ws/rooms/lobby/", ready))]
    certificate = Path(prosody.env["PROSODY_DATA_DIR"]) / "certs" / f"{domain}.crt"
    alice = XmppTestClient(f"alice@{domain}", "alice-pw", port=5222, host=prosody.address,
                           ca_file=certificate)  # STARTTLS, the server's certificate pinned
    await alice.start()
    try:
        alice.join(room, "alice")
        await alice.expect(lambda s: s.kind == "presence" and s.sender == f"{room}/alice", timeout=30)
        watchers.append(asyncio.ensure_future(receivers.xmpp_client(alice, room)))
        await asyncio.wait_for(ready.wait(), 30)
        device = TestDevice(1883, "sensor-1", "sensor-pw", host=stack.process("mosquitto").address,
                            client_id="sensor-1")  # its broker client is bound to its own id

        # --- a stream, with one runmqtt and one runworker stopped, the other pair killed ---
        publishing = threading.Thread(target=publish_paced, args=(device, 0, FIRST), kwargs={"per_second": 25})
        publishing.start()
        await until(lambda: len(receivers.web) >= FIRST // 4, "a quarter of the stream")
        for name in ("mqtt-1", "worker-1"):
            stack.signal(name, signal.SIGTERM)
        for name in ("mqtt-1", "worker-1"):
            try:
                code = await asyncio.to_thread(stack.procs[name].popen.wait, 60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running 60 s after SIGTERM:\n{stack.procs[name].output()}")
            assert code == 0, f"{name} exited with {code} on SIGTERM:\n{stack.procs[name].output()}"
            stack.start(name)  # restart: unless-stopped
        await until(lambda: len(receivers.web) >= FIRST // 2, "half of the stream")
        for name in ("mqtt-2", "worker-2"):
            stack.procs[name].kill()
            stack.start(name)
        await asyncio.to_thread(publishing.join, 60)

        texts = {f"reading {i}" for i in range(FIRST)}
        await until(lambda: {m["text"] for m in receivers.web} >= texts, "every message on the WebSocket")
        await until(lambda: len(stored(stack)) >= FIRST, "every message in PostgreSQL")
        await until(lambda: all(any(t in body for body in receivers.xmpp) for t in texts),
                    "every message in the XMPP room")
        rows = stored(stack)
        assert sorted(text for text, _ in rows) == sorted(texts)  # nothing lost, nothing twice
        assert len({key for _, key in rows}) == FIRST
        seqs = [m["seq"] for m in receivers.web]
        assert len(seqs) == len(set(seqs)), "a WebSocket frame came twice"
        await asyncio.to_thread(stack.wait_healthy, *BRIDGE, timeout=240)

        # --- every process's metrics answer, and agree with a burst to a healthy stack ---
        for name in BRIDGE:
            assert metric(metrics_url(stack, name), "bridge_dependency_up", check="database") == 1, name
        assert http(f"http://{proxy.address}:8080/metrics")[0] == 404  # hidden from outside
        before = {
            "in": sum(metric(metrics_url(stack, n), "bridge_messages_in_total", edge="mqtt") for n in ("mqtt-1", "mqtt-2")),
            "web": sum(metric(metrics_url(stack, n), "bridge_messages_out_total", edge="web") for n in WEB),
            "xmpp": metric(metrics_url(stack, "xmpp"), "bridge_messages_out_total", edge="xmpp"),
            "mqtt_out": sum(metric(metrics_url(stack, n), "bridge_messages_out_total", edge="mqtt") for n in ("mqtt-1", "mqtt-2")),
        }
        assert sum(metric(metrics_url(stack, n), "bridge_websocket_connections") for n in WEB) == 1
        await asyncio.to_thread(publish_paced, device, FIRST, SECOND, per_second=50)
        await until(lambda: len(stored(stack)) >= FIRST + SECOND, "the burst in PostgreSQL")
        await until(lambda: len(receivers.web) >= FIRST + SECOND, "the burst on the WebSocket")
        await until(lambda: sum(f"reading {i}" in b for b in receivers.xmpp for i in range(FIRST, FIRST + SECOND)) >= SECOND,
                    "the burst in the XMPP room")
        assert sum(metric(metrics_url(stack, n), "bridge_messages_in_total", edge="mqtt") for n in ("mqtt-1", "mqtt-2")) == before["in"] + SECOND
        assert sum(metric(metrics_url(stack, n), "bridge_messages_out_total", edge="web") for n in WEB) == before["web"] + SECOND
        await until(lambda: metric(metrics_url(stack, "xmpp"), "bridge_messages_out_total", edge="xmpp") >= before["xmpp"] + SECOND,
                    "the XMPP edge's count")
        assert metric(metrics_url(stack, "xmpp"), "bridge_messages_out_total", edge="xmpp") == before["xmpp"] + SECOND
        await until(lambda: sum(metric(metrics_url(stack, n), "bridge_messages_out_total", edge="mqtt") for n in ("mqtt-1", "mqtt-2")) >= before["mqtt_out"] + SECOND,
                    "the MQTT edge's publishes")
        for name in ("worker-1", "worker-2"):
            assert metric(metrics_url(stack, name), "bridge_task_queue_depth") >= 0
        device.close()
    finally:
        for watcher in watchers:
            watcher.cancel()
        await alice.stop()

    # --- /readyz follows Redis, with no process restarted by hand ---
    readyz = f"http://{web.address}:8000/readyz"
    assert http(readyz)[0] == 200
    stack.signal("redis", signal.SIGTERM)
    down = await until(lambda: http(readyz)[0] == 503, "/readyz 503 once Redis is stopped", timeout=30)
    stack.start("redis")
    up = await until(lambda: http(readyz)[0] == 200, "/readyz 200 once Redis is back", timeout=60)
    print(f"/readyz: 503 {down:.1f} s after Redis stopped, 200 {up:.1f} s after it started again")
