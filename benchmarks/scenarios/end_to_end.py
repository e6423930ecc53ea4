"""(4) End to end across protocols: devices publish into a room that is on the web and in XMPP.

Devices publish stamped QoS 1 chat messages with ids at a steady rate (500 a
second) into one room with 100 WebSocket clients (uvicorn) and 10 XMPP
occupants (slixmpp clients, STARTTLS, in two processes) on a real Prosody;
the bridge runs `runmqtt`, uvicorn and `runxmpp` (Redis channel layer,
SQLite). Figures: p50/p99 from the device's publish to each WebSocket frame
and to each XMPP stanza. Floor: the same stream from mosquitto to one plain
paho subscriber, in the same run; "added" is the bridge's figure minus it.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import Load, Options, Profile, median_row, say
from benchmarks.scenarios.mqtt_ingress import BrokerFloor
from benchmarks.stacks import DEVICE_PASSWORD, Stack

RATE = 500.0
DEVICES = 10
WEB_CLIENTS = 100
OCCUPANTS = 10
OCCUPANT_PROCESSES = 2
KEYS = ("p50_ms", "p99_ms", "delivered_pct")


def run(opts: Options) -> list[dict[str, Any]]:
    seconds = opts.pick(5, 15)
    floor: dict[str, Any] = {}
    rows = []
    for target in ("mosquitto-floor", "bridge"):
        if not opts.wants(target):
            continue
        say(f"end to end: {target}, {RATE:.0f} msg/s for {seconds} s")
        with tempfile.TemporaryDirectory(prefix=f"bench-e2e-{target}-") as tmp:
            stack = Stack(Path(tmp), opts, f"end_to_end-{target}")
            try:
                found = _target(stack, target, count=int(RATE * seconds))
            finally:
                stack.stop()
        for path, row in found.items():
            if target == "mosquitto-floor":
                floor = row
            elif floor:
                for key in ("p50_ms", "p99_ms"):
                    if row.get(key) is not None and floor.get(key) is not None:
                        row[f"added_{key}"] = round(row[key] - floor[key], 3)
            rows.append({"scenario": "end_to_end", "target": target, "path": path, "rate": RATE, **row})
    return rows


def _target(stack: Stack, target: str, *, count: int) -> dict[str, dict[str, Any]]:
    """Per path (where the stream was received): its figures, medians over the runs."""
    opts = stack.opts
    bridge = target == "bridge"
    stack.infra(devices=DEVICES, occupants=OCCUPANTS if bridge else 0)
    audiences: dict[str, tuple[Any, int]] = {}
    profiled = None
    if bridge:
        assert stack.xmpp is not None
        env = stack.bridge_env()
        profiled = stack.bridge_runxmpp(env)
        stack.bridge_runmqtt(env)
        address = stack.bridge_asgi(env)
        web = Load("ws_listeners", [
            "--url", f"ws://{address}/ws/rooms/lobby/", "--origin", f"http://{address}", "--bridge",
            "--clients", str(WEB_CLIENTS), "--idle", "15"], cpus=opts.load_cpus)
        audiences[f"WebSocket ({WEB_CLIENTS} clients)"] = (web, WEB_CLIENTS)
        each = OCCUPANTS // OCCUPANT_PROCESSES
        for n in range(OCCUPANT_PROCESSES):
            xmpp = Load("xmpp_occupants", ["listen", "--join", "--idle", "15", *stack.occupant_args(n * each, each)],
                        cpus=opts.load_cpus)
            audiences[f"XMPP ({OCCUPANTS} occupants) {n}"] = (xmpp, each)
        for load, _ in audiences.values():
            load.read()
    else:
        audiences["MQTT subscriber"] = (BrokerFloor(stack), 1)
    try:
        # Warm-up: devices registered on first use, their puppets in the XMPP room.
        _one_run(stack, audiences, count=DEVICES * 5, tag=f"warm-{uuid.uuid4().hex[:6]}")
        runs: dict[str, list[dict[str, Any]]] = {}
        for n in range(opts.runs):
            tag = f"e{n}-{uuid.uuid4().hex[:6]}"
            with Profile(opts, profiled.popen.pid if profiled and n == 0 else 0, "end_to_end-runxmpp"):
                got = _one_run(stack, audiences, count=count, tag=tag)
            for path, row in got.items():
                runs.setdefault(path, []).append(row)
                say(f"  run {n + 1}/{opts.runs} {path}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                    f"{row['delivered_pct']} % delivered")
    finally:
        for load, _ in audiences.values():
            load.close()
    return {path: median_row(rows, KEYS) for path, rows in runs.items()}


def _one_run(stack: Stack, audiences: dict[str, tuple[Any, int]], *, count: int, tag: str) -> dict[str, dict[str, Any]]:
    assert stack.broker is not None
    for load, _ in audiences.values():
        load.tell(f"{tag} {count}")
    devices = Load("mqtt_devices", [
        "--port", str(stack.broker.port), "--devices", str(DEVICES), "--password", DEVICE_PASSWORD,
        "--count", str(count), "--rate", str(RATE), "--tag", tag,
    ], cpus=stack.opts.load_cpus)
    devices.result()
    seen = {path: (load.read(), clients) for path, (load, clients) in audiences.items()}
    # The XMPP occupants' processes are one audience: their samples pooled.
    merged: dict[str, tuple[dict[str, Any], int]] = {}
    for path, (got, clients) in seen.items():
        key = path.rsplit(" ", 1)[0] if path.startswith("XMPP") else path
        if key in merged:
            old, old_clients = merged[key]
            got = {"deliveries": old["deliveries"] + got["deliveries"],
                   "sample_ms": old["sample_ms"] + got["sample_ms"]}
            clients += old_clients
        merged[key] = (got, clients)
    result = {}
    for path, (got, clients) in merged.items():
        # Pooled processes: percentiles of their samples (each uniform over its own deliveries).
        samples = sorted(got["sample_ms"])
        pooled = {"p50_ms": samples[len(samples) // 2] if samples else None,
                  "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else None}
        result[path] = {
            "delivered_pct": round(100 * got["deliveries"] / (clients * count), 2),
            "p50_ms": got.get("p50_ms", pooled["p50_ms"]), "p99_ms": got.get("p99_ms", pooled["p99_ms"]),
            "sample_ms": got["sample_ms"],
        }
    return result
