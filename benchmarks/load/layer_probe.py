"""group_send cost and delivery rate by group size, for one Redis channel layer, in this process.

Run: python -m benchmarks.load.layer_probe --redis redis://... --layer core --members 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--layer", choices=("core", "pubsub"), required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--deliveries", type=int, default=50000, help="sends x members, about")
    args = parser.parse_args()
    hosts = [{"address": args.redis}]
    layer = RedisChannelLayer(hosts=hosts, capacity=10000) if args.layer == "core" else RedisPubSubChannelLayer(hosts=hosts)
    channels = [await layer.new_channel() for _ in range(args.members)]
    for channel in channels:
        await layer.group_add("bench", channel)
    sends = max(20, args.deliveries // args.members)
    burst = 10  # sends between drains: well under the per-channel capacity
    times = []
    started = time.perf_counter()
    for i in range(sends):
        t0 = time.perf_counter()
        await layer.group_send("bench", {"type": "room.message", "n": i, "text": "x" * 100})
        times.append(time.perf_counter() - t0)
        if i % burst == burst - 1 or i == sends - 1:
            pending = i % burst + 1
            await asyncio.gather(*(_drain(layer, c, pending) for c in channels))
    total = time.perf_counter() - started
    times.sort()
    if hasattr(layer, "flush"):
        await layer.flush()
    sys.stdout.write(json.dumps({
        "send_ms": round(statistics.median(times) * 1e3, 3),
        "send_p99_ms": round(times[int(len(times) * 0.99)] * 1e3, 3),
        "deliveries_per_s": round(sends * args.members / total, 1), "sends": sends,
    }) + "\n")


async def _drain(layer: object, channel: str, count: int) -> None:
    for _ in range(count):
        await layer.receive(channel)  # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main())
