"""(3) Idle connections: N WebSocket clients sit in one room on one server process.

Memory per connection (the server's resident memory after the connections
minus before, divided by N) and CPU while they idle. Targets: the bridge on
uvicorn (Redis channel layer); the tutorial consumer on Daphne, at every size
up to 10,000 (the issue's comparison); above that the bridge alone (does one
process hold 20,000?). The open-file limit is raised for the servers and the
load generator (each socket is a file on both sides).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness import Load, Options, cpu_seconds, raise_open_files, rss_kib, say
from benchmarks.stacks import Stack

SETTLE = 5.0
PEER_UP_TO = 10000  # the tutorial peer is measured up to here
# Files besides the sockets, per process: the server had 25 open after its warm-up
# (listening socket, Redis, SQLite, logs, the interpreter's own) and the load generator
# 6; each process has its own limit, so N sockets need N + this on each side.
SPARE_FILES = 100


def run(opts: Options) -> list[dict[str, Any]]:
    rows = []
    sizes = opts.connections or opts.pick((2000,), (10000, 20000))
    limit = raise_open_files(max(sizes) + SPARE_FILES)
    for connections in sizes:
        if connections + SPARE_FILES > limit:
            say(f"idle: {connections} connections skipped: the open-file limit is {limit}")
            continue
        for target in ("bridge", "daphne+RedisChannelLayer"):
            if not opts.wants(target) or (target != "bridge" and connections > PEER_UP_TO):
                continue
            say(f"idle: {target}, {connections} connections")
            with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
                stack = Stack(Path(tmp), opts, f"idle-{target}-{connections}")
                try:
                    rows.append({"scenario": "idle", "target": target, "connections": connections,
                                 "group": connections,
                                 **_target(stack, target, connections)})
                finally:
                    stack.stop()
    return rows


def _target(stack: Stack, target: str, connections: int) -> dict[str, Any]:
    opts = stack.opts
    stack.infra()
    if target == "bridge":
        env = stack.bridge_env()
        address = stack.bridge_asgi(env)
        args = ["--url", f"ws://{address}/ws/rooms/lobby/", "--origin", f"http://{address}", "--bridge"]
    else:
        env = stack.peer_env()
        address = stack.peer_asgi(env, "daphne")
        args = ["--url", f"ws://{address}/ws/chat/lobby/"]
    pid = stack.procs[-1].popen.pid
    warm = Load("ws_listeners", [*args, "--clients", "20"], cpus=opts.load_cpus)
    warm.read()
    warm.close()  # every code path loaded once before the baseline
    time.sleep(SETTLE)
    before = rss_kib(pid)
    server_files = psutil.Process(pid).num_fds()
    idle = Load("ws_listeners", [*args, "--clients", str(connections)], cpus=opts.load_cpus)
    try:
        ready = idle.read()
        load_files = psutil.Process(idle.popen.pid).num_fds()
        say(f"  {connections} connected in {ready.get('connect_s')} s; open files: server {server_files} "
            f"before, load generator {load_files}")
        time.sleep(SETTLE)
        after = rss_kib(pid)
        window = opts.pick(10.0, 30.0)
        cpu0 = cpu_seconds(pid)
        time.sleep(window)
        cpu1 = cpu_seconds(pid)
        idle.tell("status")
        still = idle.read()["open"]
    finally:
        idle.close()
    per = (after - before) / connections
    say(f"  {per:.1f} KiB per connection, idle CPU {100 * (cpu1 - cpu0) / window:.2f} %, {still} still open")
    return {"kib_per_connection": round(per, 1), "idle_cpu_pct": round(100 * (cpu1 - cpu0) / window, 2),
            "open": still, "rss_before_kib": before, "rss_after_kib": after,
            "connect_s": ready.get("connect_s"), "server_files_before": server_files,
            "load_files": load_files}
