"""N WebSocket clients in one room: each frame's latency from the stamp its sender put in it.

Speaks JSON lines: one once every socket is open; then, for each line `<tag> <expect>`
on stdin, one when every client has seen `expect` frames of that run (or none
came for `--idle` seconds); `status` answers how many sockets are still open.
Run: python -m benchmarks.load.ws_listeners --url ws://... --clients 200 [--bridge]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array

from benchmarks.load import rawws
from benchmarks.load.stats import STAMP, summary


class Phase:
    """What the clients have seen of one run."""

    def __init__(self, clients: int, prefix: bytes) -> None:
        self.clients, self.prefix = clients, prefix
        self.reset("", 0)

    def reset(self, tag: str, expect: int) -> None:
        self.tag, self.expect = f"r={tag};".encode(), expect
        self.latencies: array = array("d")
        self.counts = [0] * self.clients
        self.first: float | None = None
        self.last: float | None = None
        self.full = 0
        self.done = asyncio.Event()

    def handler(self, index: int):  # type: ignore[no-untyped-def]
        def on_text(payload: bytes) -> None:
            if self.tag not in payload or not payload.startswith(self.prefix):
                return
            match = STAMP.search(payload)
            if match is None:
                return
            now = time.monotonic()
            self.latencies.append(now - float(match[1]))
            self.first = self.first or now
            self.last = now
            self.counts[index] += 1
            if self.counts[index] == self.expect:
                self.full += 1
                if self.full == self.clients:
                    self.done.set()
        return on_text

    async def wait(self, idle: float) -> None:
        seen = -1
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), timeout=idle)
            except TimeoutError:
                if len(self.latencies) == seen:
                    return  # nothing new for `idle` seconds: the rest is lost
                seen = len(self.latencies)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", action="append", required=True, help="several: clients spread over them")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--origin", default="")
    parser.add_argument("--bridge", action="store_true", help="count only the bridge's `message` frames")
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()

    phase = Phase(args.clients, b'{"type": "message"' if args.bridge else b"")
    headers = {"Origin": args.origin} if args.origin else {}
    sockets = []
    gate = asyncio.Semaphore(50)  # handshakes at once: a server's backlog is finite

    async def open_one(index: int) -> None:
        async with gate:
            url = args.url[index % len(args.url)]
            for attempt in range(5):
                try:
                    sockets.append(await rawws.connect(url, phase.handler(index), headers=headers))
                    return
                except (ConnectionError, OSError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    started = time.monotonic()
    await asyncio.gather(*(open_one(i) for i in range(args.clients)))
    connect_s = time.monotonic() - started
    reply({"ready": True, "clients": len(sockets), "connect_s": round(connect_s, 2)})

    # One phase per command line on stdin (`<tag> <expect>`); `status` reports open sockets.
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words == ["status"]:
            reply({"open": sum(1 for s in sockets if not s.closed.done())})
            continue
        phase.reset(words[0], int(words[1]))
        await phase.wait(args.idle)
        result = summary(phase.latencies, first=phase.first, last=phase.last)
        result["complete"] = sum(1 for c in phase.counts if c >= phase.expect)
        result["open"] = sum(1 for s in sockets if not s.closed.done())
        reply(result)
    for sock in sockets:
        sock.close()


def reply(body: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
