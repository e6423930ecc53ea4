"""N WebSocket clients in one room: each frame's latency from the stamp its sender put in it.

Speaks JSON lines: one once every socket is open; then, for each line `<tag> <expect>`
on stdin, one when every client has seen `expect` frames of that run (or none
came for `--idle` seconds); `status` answers how many sockets are still open.
With `--arrival`, latencies end at each frame's arrival in this machine's kernel
(its receive stamp), not at the moment this process read it; the read latencies
are reported beside them (`read`). With `--stages` (the bridge's frames), the first client also splits each latency at the
message's `created` (when the bridge built its row): publish to stored, stored to frame.
Run: python -m benchmarks.load.ws_listeners --url ws://... --clients 200 [--bridge] [--stages]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from array import array
from datetime import datetime

from benchmarks.load import rawws
from benchmarks.load.stats import STAMP, percentiles, summary

CREATED = re.compile(rb'"created": "([^"]+)"')
NUMBER = re.compile(rb";n=([0-9]+)")
# Wall clock (the bridge's `created`) to the system-wide monotonic clock (the stamps).
WALL_TO_MONOTONIC = time.time() - time.monotonic()


class Phase:
    """What the clients have seen of one run."""

    def __init__(self, clients: int, prefix: bytes, *, stages: bool = False, stamped: bool = False) -> None:
        self.clients, self.prefix, self.stages, self.stamped = clients, prefix, stages, stamped
        self.reset("", 0)

    def reset(self, tag: str, expect: int) -> None:
        self.tag, self.expect = f"r={tag};".encode(), expect
        self.latencies: array = array("d")
        self.read_latencies: array = array("d")  # to the read, when latencies end at arrival
        # With stages, client 0's frames: publish -> stored, stored -> frame (seconds).
        self.to_stored: array = array("d")
        self.to_frame: array = array("d")
        self.counts = [0] * self.clients
        self.first: float | None = None
        self.last: float | None = None
        # Per message (its `n`): the first and the last client's latency, in seconds.
        self.spread: dict[int, list[float]] = {}
        self.cpu_started = time.process_time()
        self.full = 0
        self.done = asyncio.Event()

    def handler(self, index: int):  # type: ignore[no-untyped-def]
        def on_text(payload: bytes) -> None:
            if self.tag not in payload or not payload.startswith(self.prefix):
                return
            match = STAMP.search(payload)
            if match is None:
                return
            now = rawws.arrival()
            latency = now - float(match[1])
            self.latencies.append(latency)
            if self.stamped:
                self.read_latencies.append(time.monotonic() - float(match[1]))
            number = NUMBER.search(payload)
            if number is not None:
                spread = self.spread.get(int(number[1]))
                if spread is None:
                    self.spread[int(number[1])] = [latency, latency]
                else:
                    spread[1] = latency
            if self.stages and index == 0:
                self._split(payload, float(match[1]), now)
            self.first = self.first or now
            self.last = now
            self.counts[index] += 1
            if self.counts[index] == self.expect:
                self.full += 1
                if self.full == self.clients:
                    self.done.set()
        return on_text

    def _split(self, payload: bytes, published: float, now: float) -> None:
        found = CREATED.search(payload)
        if found is None:
            return
        stored = datetime.fromisoformat(found[1].decode()).timestamp() - WALL_TO_MONOTONIC
        self.to_stored.append(stored - published)
        self.to_frame.append(now - stored)

    def message_figures(self) -> dict[str, object]:
        """Per message: how long from its first to its last client (the fan-out pass as the
        clients saw it), the slowest messages, and this process's CPU time in the run."""
        widths = sorted(last - first for first, last in self.spread.values())
        slowest = sorted(self.spread.items(), key=lambda item: item[1][1], reverse=True)[:5]
        return {
            "pass_ms": {"p50": round(widths[len(widths) // 2] * 1e3, 3) if widths else None,
                        "max": round(widths[-1] * 1e3, 3) if widths else None},
            "slowest": [[n, round(first * 1e3, 2), round(last * 1e3, 2)] for n, (first, last) in slowest],
            "load_cpu_s": round(time.process_time() - self.cpu_started, 3),
        }

    def stage_figures(self) -> dict[str, object]:
        return {"publish_to_stored": percentiles(self.to_stored), "stored_to_frame": percentiles(self.to_frame)}

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
    parser.add_argument("--origin", default="",
                        help="the Origin header; 'own': each URL's own origin, as a page it served would send")
    parser.add_argument("--bridge", action="store_true", help="count only the bridge's `message` frames")
    parser.add_argument("--stages", action="store_true", help="split client 0's latencies at `created`")
    parser.add_argument("--arrival", action="store_true",
                        help="latency to each frame's kernel receive stamp, not to when it was read")
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()

    phase = Phase(args.clients, b'{"type": "message"' if args.bridge else b"", stages=args.stages,
                  stamped=args.arrival)
    fixed = {"Origin": args.origin} if args.origin and args.origin != "own" else {}
    sockets = []
    gate = asyncio.Semaphore(50)  # handshakes at once: a server's backlog is finite

    async def open_one(index: int) -> None:
        async with gate:
            url = args.url[index % len(args.url)]
            # Each server process checks the Origin by scheme, host and port (its own).
            headers = {"Origin": "http://" + url.split("/")[2]} if args.origin == "own" else fixed
            for attempt in range(5):
                try:
                    sock = await rawws.connect(url, phase.handler(index), headers=headers)
                    if args.arrival:
                        sock.stamp_arrivals()
                    sockets.append(sock)
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
        result.update(phase.message_figures())
        if args.arrival:
            result["read"] = percentiles(phase.read_latencies)
        result["open"] = sum(1 for s in sockets if not s.closed.done())
        if args.stages:
            result["stages"] = phase.stage_figures()
        reply(result)
    for sock in sockets:
        sock.close()


def reply(body: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
