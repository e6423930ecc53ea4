"""The fault suite's harness: a whole deployment on loopback, faults from outside, figures out.

`deployment(tmp)` starts redis-server, mosquitto, a web process (uvicorn),
`runmqtt` and `runworker` (both with their ops endpoint), waits until each
says it is ready (`/readyz`), and stops them after. Scenarios inject faults
from outside (`redis_kill`, `redis_start`, `redis_freeze`/`redis_thaw`,
signals to any process, a `TcpProxy` in front of Redis or between `runmqtt` and
the broker, `runmqtt_start` after a kill), count what was stored
(`stored`), listen like browsers (`Listener`) and devices (`RoomWatcher`),
publish like devices (`DeviceStream`), and print one line each (`report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import websockets
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.http import request
from tests.support.mosquitto import Mosquitto, mosquitto_server
from tests.support.mqtt_device import TestDevice
from tests.support.processes import (
    Proc,
    free_port,
    manage,
    query,
    redis_server,
    start_manage,
    wait_for_port,
)
from tests.support.stack import Stack, provision
from tests.support.tcpproxy import TcpProxy

DEVICE, DEVICE_PASSWORD = "sensor-1", "pw-sensor-1"


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Seconds it took; TimeoutError naming `what` if it never held."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def report(scenario: str, condition: str, **figures: object) -> None:
    """The scenario's one line: what it shows, the pass condition, the measured figures."""
    shown = " ".join(f"{k}={round(v, 2) if isinstance(v, float) else v}" for k, v in figures.items())
    print(f"\nFAULT {scenario} | pass: {condition} | {shown}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """The value at fraction `q` of the sorted values (q=0.99: the p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib(proc: Proc) -> float:
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Deployment:
    tmp: Path
    stack: Stack
    broker: Mosquitto
    redis_port: int
    redis: Proc | None
    web: str
    ops: dict[str, int]  # process name -> its ops port
    proxy: TcpProxy | None = None
    # Between runmqtt and mosquitto (deployment(mqtt_proxy=True)); devices connect directly.
    mqtt_proxy: TcpProxy | None = None
    procs: dict[str, Proc] = field(default_factory=dict)

    # --- faults ----------------------------------------------------------------------

    def redis_kill(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        self.redis = None

    def redis_start(self) -> None:
        """A fresh, empty redis-server on the same port."""
        self.redis = redis_server(self.tmp, port=self.redis_port)

    def redis_freeze(self) -> None:
        assert self.redis is not None
        self.redis.popen.send_signal(signal.SIGSTOP)

    def redis_thaw(self) -> None:
        assert self.redis is not None
        self.redis.popen.send_signal(signal.SIGCONT)

    def runmqtt_start(self, name: str = "runmqtt", client_id: str = "bridge-faults") -> Proc:
        """(Again) runmqtt, through the MQTT proxy if there is one; returns once it is ready."""
        env = dict(self.stack.env)
        if self.mqtt_proxy is not None:
            env["MQTT_URL"] = self.broker.bridge_url.replace(f":{self.broker.port}", f":{self.mqtt_proxy.port}")
        proc = start_manage(
            name, ["runmqtt", "--client-id", client_id, "--ops-port", str(self.ops["runmqtt"])],
            env=env, log_dir=self.tmp,
        )
        self.procs["runmqtt"] = proc
        self.stack.procs.append(proc)
        wait_for_port(self.ops["runmqtt"], proc=proc)
        _ready_or_fail(self, "runmqtt", proc)
        return proc

    # --- observations ---------------------------------------------------------------------

    def exited(self) -> list[str]:
        """Bridge processes that are no longer running (a scenario expects none)."""
        return [name for name, proc in self.procs.items() if proc.popen.poll() is not None]

    def readyz(self, name: str) -> tuple[int, Any]:
        url = f"{self.web}/readyz" if name == "web" else f"http://127.0.0.1:{self.ops[name]}/readyz"
        try:
            return request(url)
        except OSError as exc:
            return 0, {"error": str(exc)}

    def ready(self, name: str) -> bool:
        return self.readyz(name)[0] == 200

    def stored(self, room: str = "lobby", prefix: str = "") -> tuple[int, int]:
        """(messages stored in `room` whose text starts with `prefix`, distinct texts among them)."""
        rows = query(
            self.stack.database_url,
            "SELECT count(*), count(DISTINCT m.text) FROM bridge_message m JOIN bridge_room r "
            "ON r.id = m.room_id WHERE r.slug = ? AND m.text LIKE ?",
            (room, f"{prefix}%"),
        )
        return int(rows[0][0]), int(rows[0][1])  # type: ignore[call-overload]

    def reconciled_seconds_ago(self) -> float:
        """How long ago the worker's reconciler last ran through (its loop in /readyz)."""
        status, body = self.readyz("worker")
        check = body.get("checks", {}).get("loop:worker.reconcile", {}) if status else {}
        return float(check.get("last_ok_seconds_ago", float("inf")))

    def device(self, name: str = DEVICE, password: str = DEVICE_PASSWORD) -> TestDevice:
        return TestDevice(self.broker.port, name, password, inflight=200)


def _ready_or_fail(deployment: Deployment, name: str, proc: Proc) -> None:
    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{proc.output()}")
        return deployment.ready(name)

    wait_until(ready, timeout=60, what=f"{name} /readyz")


@contextlib.contextmanager
def deployment(tmp: Path, *, redis_proxy: bool = False, mqtt_proxy: bool = False, **env: str) -> Iterator[Deployment]:
    """Everything running and ready; every process stopped after, by its own id."""
    redis = redis_server(tmp)
    redis_port = int(redis.extra["port"])  # type: ignore[call-overload]
    proxy = None
    if redis_proxy:
        proxy = TcpProxy(target_port=redis_port)
        proxy.start()
    layer_port = proxy.port if proxy else redis_port
    broker = mosquitto_server(tmp / "mosquitto", {DEVICE: DEVICE_PASSWORD})
    stack = provision(
        tmp, rooms=("lobby",), REDIS_URL=f"redis://127.0.0.1:{layer_port}/0",
        MQTT_URL=broker.bridge_url, MQTT_UNKNOWN_DEVICES="refuse", MQTT_SWEEP_INTERVAL="2",
        BRIDGE_RECONCILE_INTERVAL="2", **env,
    )
    manage(["devices", "add", DEVICE, "--room", "lobby"], env=stack.env)
    ops = {"runmqtt": free_port(), "worker": free_port()}
    found = Deployment(tmp=tmp, stack=stack, broker=broker, redis_port=redis_port, redis=redis,
                       web="", ops=ops, proxy=proxy)
    if mqtt_proxy:
        found.mqtt_proxy = TcpProxy(target_port=broker.port)
        found.mqtt_proxy.start()
    try:
        found.web = stack.asgi("web")
        found.procs["web"] = stack.procs[-1]
        found.procs["worker"] = start_manage(
            "worker", ["runworker", "bridge-tasks", "--ops-port", str(ops["worker"])],
            env=stack.env, log_dir=tmp,
        )
        stack.procs.append(found.procs["worker"])
        found.runmqtt_start()
        for name in ("web", "worker"):
            if name != "web":
                wait_for_port(ops[name], proc=found.procs[name])
            _ready_or_fail(found, name, found.procs[name])
        yield found
    finally:
        if found.redis is not None:
            found.redis_thaw()  # a frozen redis does not stop on SIGTERM
        stack.stop()
        broker.stop()
        if proxy is not None:
            proxy.stop()
        if found.mqtt_proxy is not None:
            found.mqtt_proxy.stop()
        if found.redis is not None:
            found.redis.stop()


class DeviceStream:
    """One device publishing `count` QoS 1 messages (`<prefix>-<i>`, JSON with that id) at `rate`/s."""

    def __init__(self, device: TestDevice, *, count: int, rate: float, prefix: str = "m") -> None:
        self.device, self.count, self.rate, self.prefix = device, count, rate, prefix
        self.sent = 0
        self.acknowledged = threading.Semaphore(0)
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-stream", daemon=True)
        # Counted from PUBACKs, not paho's wait_for_publish, which raises for a message
        # published while the broker was away (paho still queues and sends it).
        device.client.on_publish = lambda client, userdata, mid, reason, properties: self.acknowledged.release()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        for i in range(self.count):
            delay = started + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            text = f"{self.prefix}-{i}"
            self.device.publish("devices/sensor-1/rooms/lobby", json.dumps({"text": text, "id": text}))
            self.sent += 1
        deadline = time.monotonic() + 120
        for _ in range(self.count):
            if not self.acknowledged.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return  # never done: the scenario's wait on `done` fails
        self.done.set()


class RoomWatcher:
    """A device's subscription to rooms/lobby/messages, made again after every reconnect
    (a restarted broker forgot it), recording every seq in arrival order."""

    def __init__(self, port: int) -> None:
        self.arrived: list[int] = []
        self.subscriptions = 0
        self._lock = threading.Lock()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{port}", protocol=paho.MQTTv5)
        client.username_pw_set(DEVICE, DEVICE_PASSWORD)
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("rooms/lobby/messages", qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed()
        client.on_message = lambda c, u, m: self._add(json.loads(m.payload)["seq"])
        client.connect("127.0.0.1", port, keepalive=10)
        client.loop_start()
        self.client = client

    def _subscribed(self) -> None:
        with self._lock:
            self.subscriptions += 1

    def _add(self, seq: int) -> None:
        with self._lock:
            self.arrived.append(seq)

    def seqs(self) -> set[int]:
        with self._lock:
            return set(self.arrived)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """A browser's socket on a room: collects every seq it is shown, reconnects like the page
    (`?after=<last seq>`) when the server closes it, and counts those reconnects."""

    def __init__(self, base: str, room: str = "lobby") -> None:
        self.url = base.replace("http://", "ws://") + f"/ws/rooms/{room}/"
        self.origin = base
        self.seqs: set[int] = set()
        self.frames = 0
        self.reconnects = 0
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            after = f"?after={max(self.seqs)}" if self.seqs else "?after=0"
            try:
                async with websockets.connect(self.url + after, additional_headers={"Origin": self.origin},
                                              max_size=None, open_timeout=10) as sock:
                    async for raw in sock:
                        frame = json.loads(raw)
                        self.frames += 1
                        if frame["type"] == "history":
                            self.seqs.update(m["seq"] for m in frame["messages"])
                            self.connected.set()
                        elif frame["type"] == "message":
                            self.seqs.add(frame["message"]["seq"])
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            self.reconnects += 1
            await asyncio.sleep(0.5)

    def has_all(self, last_seq: int) -> bool:
        return len(self.seqs) >= last_seq and max(self.seqs, default=0) >= last_seq


class ReadyzWatch:
    """Polls each process's /readyz (a thread each, so a slow one delays no other):
    when each went unready and ready again."""

    def __init__(self, deployment: Deployment, names: tuple[str, ...] = ("web", "runmqtt", "worker")) -> None:
        self.deployment, self.names = deployment, names
        self.history: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name,), name=f"readyz-{name}", daemon=True) for name in names
        ]

    def __enter__(self) -> ReadyzWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, name: str) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            status, _ = self.deployment.readyz(name)
            self.history[name].append((asked, status))
            self._stop.wait(0.5)

    def went_unready(self, name: str, after: float) -> bool:
        return any(status != 200 for at, status in self.history[name] if at >= after)

    def ready_again(self, name: str, after: float) -> float | None:
        """Seconds from `after` until /readyz first said 200 (None: not yet)."""
        good = [at for at, status in self.history[name] if at >= after and status == 200]
        return good[0] - after if good else None
