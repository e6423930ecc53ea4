"""uvicorn vs Daphne on the bridge's ASGI app: HTTP history reads and WebSocket chat fan-out."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

from tests.support.http import login_cookie
from tests.support.processes import free_port, start, wait_for_port
from tests.support.stack import provision

HTTP_REQUESTS = 600
HTTP_CONCURRENCY = 20
LISTENERS = 50
MESSAGES = 300


def server_argv(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "project.asgi:application", "--port", str(port), "--lifespan", "off", "--log-level", "warning"]
    return [sys.executable, "-m", "daphne", "-p", str(port), "project.asgi:application"]


async def http_reads(base: str) -> float:
    url = f"{base}/api/rooms/lobby/messages?limit=50"
    loop = asyncio.get_running_loop()

    def fetch() -> None:
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()

    start_time = time.perf_counter()
    sem = asyncio.Semaphore(HTTP_CONCURRENCY)

    async def one() -> None:
        async with sem:
            await loop.run_in_executor(None, fetch)

    await asyncio.gather(*[one() for _ in range(HTTP_REQUESTS)])
    return HTTP_REQUESTS / (time.perf_counter() - start_time)


async def chat(base: str, cookie: str) -> tuple[float, float, float]:
    ws = base.replace("http://", "ws://") + "/ws/rooms/lobby/"
    listeners = [await websockets.connect(ws, additional_headers={"Origin": base}) for _ in range(LISTENERS)]
    sender = await websockets.connect(ws, additional_headers={"Origin": base, "Cookie": cookie})
    for sock in [*listeners, sender]:
        await sock.recv()  # history

    async def drain(sock: websockets.ClientConnection) -> None:
        seen = 0
        while seen < MESSAGES:
            if json.loads(await sock.recv())["type"] == "message":
                seen += 1

    drains = [asyncio.create_task(drain(sock)) for sock in listeners]
    latencies = []
    start_time = time.perf_counter()
    for i in range(MESSAGES):
        t0 = time.perf_counter()
        await sender.send(json.dumps({"type": "message", "text": f"m{i}"}))
        while json.loads(await sender.recv())["type"] != "message":
            pass
        latencies.append(time.perf_counter() - t0)
    await asyncio.gather(*drains)
    elapsed = time.perf_counter() - start_time
    for sock in [*listeners, sender]:
        await sock.close()
    latencies.sort()
    return MESSAGES / elapsed, statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3


async def main() -> None:
    for kind in ("uvicorn", "daphne"):
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        stack = provision(tmp)
        port = free_port()
        proc = start(kind, server_argv(kind, port), log_dir=tmp, env=stack.env)
        try:
            wait_for_port(port, proc=proc)
            base = f"http://127.0.0.1:{port}"
            cookie = login_cookie(base, "demo", "demo")
            rate, p50, p99 = await chat(base, cookie)
            reads = await http_reads(base)
            sys.stdout.write(
                f"{kind:<8} chat: {rate:.0f} msgs/s stored and fanned out to {LISTENERS} sockets "
                f"(round trip median {p50:.1f} ms, p99 {p99:.1f} ms); history reads: {reads:.0f} req/s\n"
            )
        finally:
            proc.stop()


if __name__ == "__main__":
    asyncio.run(main())
