"""Where an idle WebSocket's memory goes: tracemalloc in the server, diffed over N sockets.

Starts Redis and one uvicorn on `project.asgi` (as the idle scenario does) with
tracemalloc on, connects 20 sockets once (every code path loaded), snapshots,
connects N more, snapshots again and prints the difference per connection,
grouped by the line that allocated it (or by `--group file`), with the total.
Run: python -m benchmarks.idle_heap --connections 1000 [--top 40] [--group file]
(extra uvicorn options after `--`; `-- --ws auto` measures uvicorn's own protocol class).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks.harness import Load, Options, raise_open_files, rss_kib, say
from benchmarks.stacks import Stack
from protocols.websocket.server import WS_PROTOCOL
from tests.support.processes import free_port

SETTLE = 3.0
FRAMES = 12  # traceback depth kept per allocation


def serve() -> None:
    """In the server process: SIGUSR1 writes a snapshot to $HEAP_SNAPSHOT.<n>. Tracing starts at
    the first (imports untraced: a server started with it took minutes on a loaded machine)."""
    import uvicorn.main

    taken = [0]

    def dump(*_: object) -> None:
        taken[0] += 1
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        path = f"{os.environ['HEAP_SNAPSHOT']}.{taken[0]}"
        tracemalloc.take_snapshot().dump(f"{path}.part")
        os.replace(f"{path}.part", path)  # whole, or not there yet

    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["uvicorn", *sys.argv[2:]]
    uvicorn.main.main()


def _snapshot(pid: int, path: Path) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    while not path.exists():
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--group", choices=("lineno", "file", "traceback"), default="lineno")
    parser.add_argument("--save", type=Path, help="keep the two snapshots in this folder")
    parser.add_argument("uvicorn_args", nargs="*")
    args = parser.parse_args()
    raise_open_files(args.connections + 1000)
    opts = Options(runs=1, quick=True, out=Path("var/bench"), only=frozenset({"idle"}))
    with tempfile.TemporaryDirectory(prefix="heap-") as tmp:
        stack = Stack(Path(tmp), opts, "idle-heap")
        try:
            stack.infra()
            env = {**stack.bridge_env(), "HEAP_SNAPSHOT": str(Path(tmp) / "heap")}
            port = free_port()
            stack.server("uvicorn-heap", [sys.executable, "-m", "benchmarks.idle_heap", "--serve",
                                          "project.asgi:application", "--host", "127.0.0.1", "--port",
                                          str(port), "--lifespan", "off", "--log-level", "warning",
                                          "--ws", WS_PROTOCOL, *args.uvicorn_args], env, port)
            pid = stack.procs[-1].popen.pid
            url = ["--url", f"ws://127.0.0.1:{port}/ws/rooms/lobby/", "--origin",
                   f"http://127.0.0.1:{port}", "--bridge"]
            warm = Load("ws_listeners", [*url, "--clients", "20"], cpus=())
            warm.read()
            warm.close()
            time.sleep(SETTLE)
            rss0 = rss_kib(pid)
            before = _snapshot(pid, Path(tmp) / "heap.1")
            idle = Load("ws_listeners", [*url, "--clients", str(args.connections)], cpus=())
            try:
                idle.read()
                time.sleep(SETTLE)
                rss1 = rss_kib(pid)
                after = _snapshot(pid, Path(tmp) / "heap.2")
            finally:
                idle.close()
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                before.dump(str(args.save / "before.snapshot"))
                after.dump(str(args.save / "after.snapshot"))
        finally:
            stack.stop()
    n = args.connections
    stats = after.compare_to(before, args.group)
    total = sum(s.size_diff for s in stats)
    say(f"{n} sockets: RSS {(rss1 - rss0) / n:.1f} KiB each, traced heap {total / n / 1024:.2f} KiB each")
    for stat in stats[:args.top]:
        where = stat.traceback.format(limit=FRAMES if args.group == "traceback" else 1)
        sys.stdout.write(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blocks  "
                         f"{' <- '.join(w.strip() for w in where if not w.startswith('    '))}\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    else:
        main()
