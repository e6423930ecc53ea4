"""(2) Room fan-out: 200 and 1,000 WebSocket clients in one room, one sender at rising rates.

Each step offers a number of deliveries per second (messages per second times
clients) for a few seconds; the listeners report deliveries per second and
latency from send to frame. Rates rise until delivery falls behind (not every
frame arrived, or fewer than 80 % of the offered rate). Targets: the bridge
(stores every message first) on uvicorn with its Redis channel layer, one and
two server processes; the Channels tutorial's consumer on Daphne with
`RedisChannelLayer`, and on uvicorn with `RedisPubSubChannelLayer`.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import Load, Options, Profile, median_row, say
from benchmarks.stacks import Stack
from tests.support.http import login_cookie

TARGETS = (
    ("bridge", "uvicorn", "core"),
    ("daphne+RedisChannelLayer", "daphne", "core"),
    ("uvicorn+RedisPubSubChannelLayer", "uvicorn", "pubsub"),
)
OFFERED = (500, 1000, 2000, 4000, 8000, 16000, 32000, 64000)


def run(opts: Options) -> list[dict[str, Any]]:
    rows = []
    for clients in opts.pick((200, 1000), (200, 1000)):
        for processes in opts.pick((1,), (1, 2)):
            for target, server, layer in TARGETS:
                if not opts.wants(target):
                    continue
                say(f"fan-out: {target}, {processes} process(es), {clients} clients")
                name = f"fanout-{target}-{processes}-{clients}"
                with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
                    stack = Stack(Path(tmp), opts, name)
                    try:
                        row = _target(stack, target, server, layer, processes, clients)
                    finally:
                        stack.stop()
                rows.append({"scenario": "fanout", "target": target, "processes": processes,
                             "clients": clients, "group": (processes, clients), **row})
    return rows


def _target(stack: Stack, target: str, server: str, layer: str, processes: int, clients: int) -> dict[str, Any]:
    opts = stack.opts
    stack.infra()
    bridge = target == "bridge"
    if bridge:
        env = stack.bridge_env(REDIS_CHANNEL_LAYER=layer)
        addresses = [stack.bridge_asgi(env, f"uvicorn-{n}") for n in range(processes)]
        path = "/ws/rooms/lobby/"
        cookie = login_cookie(f"http://{addresses[0]}", "demo", "demo")
    else:
        env = stack.peer_env(layer)
        addresses = [stack.peer_asgi(env, server) for _ in range(processes)]
        path = "/ws/chat/lobby/"
        cookie = ""
    origin = f"http://{addresses[0]}"
    urls = [x for a in addresses for x in ("--url", f"ws://{a}{path}")]
    flags = ["--bridge"] if bridge else []
    # Latency to each frame's arrival (the kernel's receive stamp): one process reading
    # 1,000 sockets on one CPU would otherwise add its own queueing (see benchmarks/load/rawws.py).
    listeners = Load("ws_listeners", [*urls, "--clients", str(clients), "--origin", "own",
                                      "--idle", "10", "--arrival", *flags], cpus=opts.load_cpus)
    steps = []
    profile: Profile | None = None
    try:
        ready = listeners.read()
        say(f"  {clients} clients connected in {ready.get('connect_s')} s")
        _step(stack, listeners, addresses[0] + path, cookie, origin, flags, clients, rate=5, seconds=1)  # warm-up
        profile = Profile(opts, stack.procs[-1].popen.pid if processes == 1 else 0,
                          f"fanout-{target}-{clients}")
        for offered in OFFERED:
            rate = offered / clients
            runs = [_step(stack, listeners, addresses[0] + path, cookie, origin, flags, clients, rate=rate,
                          seconds=opts.pick(4, 8)) for _ in range(opts.runs)]
            step = median_row(runs, ["per_s", "p50_ms", "p99_ms", "read_p99_ms", "complete"])
            step["offered_per_s"] = offered
            kept_up = bool(step["per_s"]) and step["per_s"] >= 0.8 * offered and step["complete"] == clients
            step["kept_up"] = kept_up
            steps.append(step)
            say(f"  offered {offered}/s: {step['per_s']} deliveries/s, p50 {step['p50_ms']} ms, "
                f"p99 {step['p99_ms']} ms (read by the listeners: {step['read_p99_ms']} ms)"
                f"{'' if kept_up else ' (fell behind)'}")
            last = step["runs"][-1]
            say(f"    fan-out pass (first to last client) p50 {last.get('pass_ms')}, slowest messages "
                f"[n, first ms, last ms] {last.get('slowest')}, listeners' CPU {last.get('load_cpu_s')} s")
            if not kept_up:
                break
    finally:
        if profile is not None:
            profile.close()
        listeners.close()
    best = max((s for s in steps if s["kept_up"]), key=lambda s: s["offered_per_s"], default=None)
    near = next((s for s in steps if s["offered_per_s"] == 4000), None)
    return {
        "max_per_s": max((s["per_s"] or 0 for s in steps), default=None),
        "kept_up_to": best["offered_per_s"] if best else None,
        "best_per_s": best["per_s"] if best else None,
        "best_p50_ms": best["p50_ms"] if best else None,
        "best_p99_ms": best["p99_ms"] if best else None,
        "p99_at_4000_ms": near["p99_ms"] if near else None,
        "sample_ms": best.get("sample_ms", []) if best else [],
        "steps": [{k: v for k, v in s.items() if k != "sample_ms"} for s in steps],
    }


def _step(stack: Stack, listeners: Load, url: str, cookie: str, origin: str, flags: list[str],
          clients: int, *, rate: float, seconds: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    count = max(1, int(rate * seconds))
    listeners.tell(f"{tag} {count}")
    sender = Load("ws_sender", ["--url", f"ws://{url}", "--rate", str(rate), "--count", str(count),
                                "--tag", tag, "--origin", origin, *(["--cookie", cookie] if cookie else []),
                                *flags], cpus=stack.opts.load_cpus)
    sender.result()
    seen = listeners.read()
    # First to last delivery undercounts the time of a short step that kept up (the
    # first message is already there when timing starts): never less than the sending took.
    span = max(seen.get("span_s") or 0.0, count / rate)
    seen["per_s"] = round(seen["deliveries"] / span, 1) if seen["deliveries"] else None
    seen["read_p99_ms"] = seen.get("read", {}).get("p99_ms")
    return seen
