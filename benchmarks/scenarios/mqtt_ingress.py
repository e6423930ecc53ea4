"""(1) MQTT ingress: devices publish QoS 1 chat messages with ids into one room with a few
WebSocket listeners.

For each target: a burst (every message at once, as fast as the broker takes
them) gives the highest rate stored and fanned out to the listeners; then a
steady stream at half that rate gives the publish-to-WebSocket latency.
Targets: one `runmqtt` on SQLite and on PostgreSQL (uvicorn serving the
listeners, Redis channel layer), then, in the same stack, a second `runmqtt`
beside the first on the shared subscription and the burst again (`rate_two`,
and `two_vs_one` its ratio to one); the peer, mqttasgi with a plain Channels
consumer (ORM insert + group_send) and the tutorial consumer on Daphne; the
floor, mosquitto to one plain paho subscriber.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Load, Options, Profile, cpu_seconds, median_row, say
from benchmarks.stacks import DEVICE_PASSWORD, Stack
from tests.support.mosquitto import BRIDGE_PASSWORD, BRIDGE_USER
from tests.support.processes import query

DEVICES = 10
LISTENERS = 5
KEYS = ("rate", "p50_ms", "p99_ms", "steady_rate", "delivered")
PAIR_CLIENT_ID = "bridge-bench-2"
SETTLE_TIMEOUT = 120.0  # seconds for the bridge's MQTT publisher to catch up after a run


def run(opts: Options) -> list[dict[str, Any]]:
    rows = []
    for target in ("bridge-sqlite", "bridge-postgresql", "mqttasgi", "mosquitto-floor"):
        if not opts.wants(target):
            continue
        say(f"mqtt ingress: {target}")
        with tempfile.TemporaryDirectory(prefix=f"bench-{target}-") as tmp:
            stack = Stack(Path(tmp), opts, f"mqtt_ingress-{target}")
            try:
                rows.append({"scenario": "mqtt_ingress", "target": target, **_target(stack, target)})
            finally:
                stack.stop()
    return rows


def _target(stack: Stack, target: str) -> dict[str, Any]:
    opts = stack.opts
    stack.infra(devices=DEVICES, postgres=target == "bridge-postgresql")
    assert stack.broker is not None
    profiled = None
    env: dict[str, str] = {}
    if target.startswith("bridge"):
        env = stack.bridge_env()
        profiled = stack.bridge_runmqtt(env)
        address = stack.bridge_asgi(env)
        listen = ["--url", f"ws://{address}/ws/rooms/lobby/", "--origin", f"http://{address}", "--bridge"]
        burst = opts.pick(3000, 10000)
    elif target == "mqttasgi":
        env = stack.peer_env()
        profiled = stack.peer_mqttasgi(env)
        address = stack.peer_asgi(env, "daphne")
        listen = ["--url", f"ws://{address}/ws/chat/lobby/"]
        burst = opts.pick(300, 1000)  # it stores about a hundred a second
    else:
        listen = []
        burst = opts.pick(20000, 50000)

    def listeners() -> Load:
        if not listen:
            return BrokerFloor(stack)  # type: ignore[return-value]
        load = Load("ws_listeners", [*listen, "--clients", str(LISTENERS), "--idle", "15"],
                    cpus=opts.load_cpus)
        load.read()
        return load

    audience = listeners()
    profiled_pid = profiled.popen.pid if profiled else 0  # the first burst and steady run, with --profile
    try:
        # Warm-up: devices registered (bridge: on first use), every process connected and subscribed.
        _one_run(stack, audience, count=DEVICES * 5, rate=0, tag=f"warm-{uuid.uuid4().hex[:6]}")
        settle: Callable[[], float | None] = _settler(env) if target.startswith("bridge") else (lambda: None)
        settle()
        bursts = []
        for n in range(opts.runs):
            with Profile(opts, profiled_pid if n == 0 else 0, f"mqtt_ingress-{target}"):
                got = _one_run(stack, audience, count=burst, rate=0, tag=f"b{n}-{uuid.uuid4().hex[:6]}")
            got["drain_s"] = settle()
            drained = f"; the room's messages back out on MQTT {got['drain_s']} s later" if got["drain_s"] else ""
            say(f"  burst {n + 1}/{opts.runs}: {got['rate']} msg/s ({got['delivered']}/{burst} delivered){drained}")
            bursts.append(got)
        rate = median_row(bursts, ["rate"])["rate"] or 1.0
        steady = opts.steady_rate or max(10.0, round(rate / 2))
        seconds = opts.pick(5, 15)
        steadies = []
        for n in range(opts.runs):
            cpu_before = cpu_seconds(profiled_pid) if profiled_pid else None
            with Profile(opts, profiled_pid if n == 0 else 0, f"mqtt_ingress-{target}-steady"):
                got = _one_run(stack, audience, count=int(steady * seconds), rate=steady,
                               tag=f"s{n}-{uuid.uuid4().hex[:6]}")
            settle()  # the bridge's publishes back out on MQTT are part of the cost
            if cpu_before is not None and got.get("delivered"):
                # The MQTT process's CPU per message stored: steadier across a noisy VM than latency.
                got["cpu_us_per_msg"] = round((cpu_seconds(profiled_pid) - cpu_before) / got["delivered"] * 1e6, 1)
            cpu = f", CPU {got['cpu_us_per_msg']} us/msg" if got.get("cpu_us_per_msg") else ""
            say(f"  steady {steady:.0f} msg/s {n + 1}/{opts.runs}: p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms{cpu}")
            steadies.append(got)
        pair = _two_runmqtt(stack, audience, env, burst) if target.startswith("bridge") else None
    finally:
        audience.close()
    row = median_row(bursts, ["rate", "delivered", "drain_s"])
    latency = median_row(steadies, ["p50_ms", "p99_ms", "cpu_us_per_msg"])
    result = {
        "rate": row["rate"], "delivered": row["delivered"], "burst": burst, "drain_s": row.get("drain_s"),
        "steady_rate": steady, "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
        "cpu_us_per_msg": latency["cpu_us_per_msg"],
        "sample_ms": latency.get("sample_ms", []), "runs": {"burst": row["runs"], "steady": latency["runs"]},
    }
    if pair is not None:
        result["rate_two"] = pair["rate"]
        result["two_vs_one"] = round(pair["rate"] / row["rate"], 2) if pair["rate"] and row["rate"] else None
        result["runs"]["two"] = pair["runs"]
    return result


def _two_runmqtt(stack: Stack, audience: Any, env: dict[str, str], burst: int) -> dict[str, Any]:
    """A second runmqtt joins the first on the shared subscription: the same bursts again.

    Both are servers under test, on the same CPUs as the first (`pin`): on a
    machine whose server half is one core, the two share it.
    """
    opts = stack.opts
    stack.bridge_runmqtt(env, client_id=PAIR_CLIENT_ID)  # returns once subscribed
    _one_run(stack, audience, count=DEVICES * 5, rate=0, tag=f"warm2-{uuid.uuid4().hex[:6]}")
    settle = _settler(env)
    settle()
    runs = []
    for n in range(opts.runs):
        got = _one_run(stack, audience, count=burst, rate=0, tag=f"p{n}-{uuid.uuid4().hex[:6]}")
        settle()
        say(f"  two runmqtt, burst {n + 1}/{opts.runs}: {got['rate']} msg/s "
            f"({got['delivered']}/{burst} delivered)")
        runs.append(got)
    return median_row(runs, ["rate"])


def _settler(env: dict[str, str]) -> Callable[[], float | None]:
    """A wait for the bridge's MQTT publisher to catch up: every room's MQTT cursor at the
    room's last message (seconds waited, None if it did not within SETTLE_TIMEOUT).

    A run's listeners are done when the WebSocket frames are in; the publisher then
    still sends the room's messages back out on rooms/<room>/messages (after a 10,000
    burst, seconds of work). Each run starts once it has, so that no run measures the
    one before it (the first steady run after the bursts did, in part)."""
    url = env["DATABASE_URL"]
    behind = ("SELECT COUNT(*) FROM bridge_edgecursor c JOIN bridge_room r ON r.id = c.room_id "
              "WHERE c.edge = 'mqtt' AND c.seq < r.last_seq")

    def settle() -> float | None:
        started = time.monotonic()
        while query(url, behind)[0][0]:
            if time.monotonic() - started > SETTLE_TIMEOUT:
                say(f"  the MQTT publisher had not caught up after {SETTLE_TIMEOUT:.0f} s; going on")
                return None
            time.sleep(0.05)
        return round(time.monotonic() - started, 2)

    return settle


def _one_run(stack: Stack, audience: Any, *, count: int, rate: float, tag: str) -> dict[str, Any]:
    """Devices publish `count` messages; the listeners' view of them."""
    assert stack.broker is not None
    audience.tell(f"{tag} {count}")
    devices = Load("mqtt_devices", [
        "--port", str(stack.broker.port), "--devices", str(DEVICES), "--password", DEVICE_PASSWORD,
        "--count", str(count), "--rate", str(rate), "--tag", tag,
    ], cpus=stack.opts.load_cpus)
    devices.result()
    seen = audience.read()
    clients = seen.get("clients_per_run", LISTENERS)
    delivered = seen["deliveries"] // clients if clients else seen["deliveries"]
    span = seen.get("span_s") or 0
    return {
        "rate": round(delivered / span, 1) if span else None, "delivered": delivered,
        "p50_ms": seen["p50_ms"], "p99_ms": seen["p99_ms"], "sample_ms": seen["sample_ms"],
    }


class BrokerFloor:
    """The floor's audience: one paho subscriber per run, told the run's tag like the others."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.load: Load | None = None

    def tell(self, line: str) -> None:
        assert self.stack.broker is not None
        tag, count = line.split()
        self.load = Load("mqtt_listener", [
            "--port", str(self.stack.broker.port), "--user", BRIDGE_USER, "--password", BRIDGE_PASSWORD,
            "--topic", "devices/+/rooms/lobby", "--expect", count, "--tag", tag,
        ], cpus=self.stack.opts.load_cpus)
        self.load.read()  # subscribed

    def read(self) -> dict[str, Any]:
        assert self.load is not None
        got = self.load.result()
        got["clients_per_run"] = 1
        return got

    def close(self) -> None:
        if self.load is not None:
            self.load.close()
