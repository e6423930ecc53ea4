"""(4) End to end across protocols: devices publish into a room that is on the web and in XMPP.

Devices publish stamped QoS 1 chat messages with ids at a steady rate (500 a
second) into one room with 100 WebSocket clients (uvicorn) and 10 XMPP
occupants (slixmpp clients, STARTTLS, in two processes) on a real Prosody;
the bridge runs `runmqtt`, uvicorn and `runxmpp` (Redis channel layer,
SQLite). Figures: p50/p99 from the device's publish to each WebSocket frame
and to each XMPP stanza. Floor: the same stream from mosquitto to one plain
paho subscriber, in the same run; "added" is the bridge's figure minus it.

So that a figure says what held it, each run also reports the rate the devices
achieved (below the offered rate when their process could not keep the pace:
then the figures are not those of 500 a second), each audience's delivery rate
per client, the WebSocket latency split at the stored row's `created` (publish
to stored, stored to frame, from one client), and, for every process (servers,
infrastructure and load generators alike), the CPU it used and the time it was
runnable but waiting for a CPU (the scheduler's count), while the devices
published and until the last delivery: on 2 CPUs shared by all of them (and by
whatever else runs on the machine) that wait is often what the latency is. `--profile` samples runmqtt,
uvicorn and runxmpp with py-spy.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness import Load, Options, Profile, cpu_seconds, median_row, say
from benchmarks.scenarios.mqtt_ingress import BrokerFloor
from benchmarks.stacks import DEVICE_PASSWORD, Stack

RATE = 500.0
DEVICES = 10
WEB_CLIENTS = 100
OCCUPANTS = 10
OCCUPANT_PROCESSES = 2
KEYS = ("p50_ms", "p99_ms", "delivered_pct", "achieved_rate", "per_client_per_s")
# Below this share of the offered rate, the devices did not keep the pace: said in the row.
ACHIEVED_ENOUGH = 0.95


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
    if bridge:
        assert stack.xmpp is not None
        env = stack.bridge_env()
        stack.bridge_runxmpp(env)
        stack.bridge_runmqtt(env)
        address = stack.bridge_asgi(env)
        web = Load("ws_listeners", [
            "--url", f"ws://{address}/ws/rooms/lobby/", "--origin", f"http://{address}", "--bridge",
            "--stages", "--clients", str(WEB_CLIENTS), "--idle", "15"], cpus=opts.load_cpus)
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
            with ExitStack() as profiles:
                for proc in stack.procs if bridge and n == 0 else ():
                    if proc.name.startswith(("runmqtt", "uvicorn", "runxmpp")):
                        profiles.enter_context(Profile(opts, proc.popen.pid, f"end_to_end-{proc.name}"))
                got = _one_run(stack, audiences, count=count, tag=tag)
            for path, row in got.items():
                runs.setdefault(path, []).append(row)
                say(f"  run {n + 1}/{opts.runs} {path}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                    f"{row['delivered_pct']} % delivered, {row['per_client_per_s']} msg/s per client; "
                    f"devices {row['achieved_rate']} msg/s")
            for phase, shares in row["cpu_pct"].items():
                say(f"  run {n + 1}/{opts.runs} {phase}, per process [% of a CPU used, % of the time "
                    f"waiting for one]: {shares}")
            if "stages" in got.get(f"WebSocket ({WEB_CLIENTS} clients)", {}):
                say(f"  run {n + 1}/{opts.runs} WebSocket stages: {got[f'WebSocket ({WEB_CLIENTS} clients)']['stages']}")
    finally:
        for load, _ in audiences.values():
            load.close()
    # Medians of the figures; the CPU use and the stages of the first run (every run's are in `runs`).
    return {path: {**median_row(rows, KEYS), "cpu_pct": rows[0]["cpu_pct"], "load_avg": rows[0]["load_avg"],
                   **({"stages": rows[0]["stages"]} if "stages" in rows[0] else {})}
            for path, rows in runs.items()}


def _processes(stack: Stack, audiences: dict[str, tuple[Any, int]]) -> dict[str, int]:
    """Every long-lived process of the run by name: servers, infrastructure, load generators."""
    named = {proc.name: proc.popen.pid for proc in stack.procs}
    if stack.broker is not None and stack.broker.proc is not None:
        named["mosquitto"] = stack.broker.proc.popen.pid
    for path, (audience, _) in audiences.items():
        load = audience if isinstance(audience, Load) else getattr(audience, "load", None)
        if load is not None:
            named[f"load: {path}"] = load.popen.pid
    return named


def _cpu(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Per process (and its children): (CPU seconds used, seconds runnable but waiting for a
    CPU), the second from the scheduler's own count (/proc/<pid>/task/<tid>/schedstat)."""
    found = {}
    for name, pid in pids.items():
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            waited = 0
            for proc in procs:
                for task in Path(f"/proc/{proc.pid}/task").iterdir():
                    try:
                        waited += int((task / "schedstat").read_text().split()[1])
                    except (OSError, IndexError, ValueError):
                        continue  # a thread that ended meanwhile; a kernel without schedstat
            found[name] = (cpu_seconds(pid), waited / 1e9)
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return found


def _shares(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
            seconds: float) -> dict[str, list[float]]:
    """Per process: [% of one CPU used, % of the time runnable but waiting for a CPU]."""
    return {name: [round(100 * (after[name][i] - before[name][i]) / seconds, 1) for i in (0, 1)]
            for name in before if name in after}


def _one_run(stack: Stack, audiences: dict[str, tuple[Any, int]], *, count: int, tag: str) -> dict[str, dict[str, Any]]:
    assert stack.broker is not None
    for load, _ in audiences.values():
        load.tell(f"{tag} {count}")
    pids = _processes(stack, audiences)
    cpu_before, started = _cpu(pids), time.monotonic()
    load_before = os.getloadavg()[0]
    devices = Load("mqtt_devices", [
        "--port", str(stack.broker.port), "--devices", str(DEVICES), "--password", DEVICE_PASSWORD,
        "--count", str(count), "--rate", str(RATE), "--tag", tag,
    ], cpus=stack.opts.load_cpus)
    sent = devices.result()
    # While the devices published (what the offered rate costs), then up to the last delivery
    # (the queue drained; the listeners wait `--idle` seconds more only when some are lost).
    cpu_published, published = _cpu(pids), time.monotonic() - started
    seen = {path: (load.read(), clients) for path, (load, clients) in audiences.items()}
    cpu_after, wall = _cpu(pids), time.monotonic() - started
    cpu_pct = {"while publishing": _shares(cpu_before, cpu_published, published),
               "until the last delivery": _shares(cpu_before, cpu_after, wall)}
    cpu_pct["while publishing"]["load: devices"] = [round(100 * sent["cpu_s"] / published, 1), None]
    achieved = sent.get("achieved_per_s")
    if achieved is not None and achieved < ACHIEVED_ENOUGH * RATE:
        say(f"  the devices achieved {achieved} msg/s, not the {RATE:.0f} offered: the figures are not those of "
            f"{RATE:.0f} msg/s")
    # The XMPP occupants' processes are one audience: their samples pooled.
    merged: dict[str, tuple[dict[str, Any], int]] = {}
    for path, (got, clients) in seen.items():
        key = path.rsplit(" ", 1)[0] if path.startswith("XMPP") else path
        if key in merged:
            old, old_clients = merged[key]
            got = {"deliveries": old["deliveries"] + got["deliveries"],
                   "sample_ms": old["sample_ms"] + got["sample_ms"],
                   "spans": [*old.get("spans", [old.get("span_s") or 0]), got.get("span_s") or 0]}
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
            "achieved_rate": achieved, "per_client_per_s": _per_client(got, clients),
            "cpu_pct": cpu_pct, "load_avg": round(load_before, 2), "sample_ms": got["sample_ms"],
            **({"stages": got["stages"]} if "stages" in got else {}),
        }
    return result


def _per_client(got: dict[str, Any], clients: int) -> float | None:
    """Deliveries per second per client, from the first delivery to the last (pooled: their sum)."""
    if "per_s" in got and got["per_s"]:
        return round(got["per_s"] / clients, 1)
    spans = got.get("spans")
    if spans:
        return round(got["deliveries"] / clients / max(spans), 1)
    return None
