"""group_send cost on the in-memory, Redis and Redis pub/sub channel layers."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

from channels.layers import InMemoryChannelLayer  # noqa: E402
from channels_redis.core import RedisChannelLayer  # noqa: E402
from channels_redis.pubsub import RedisPubSubChannelLayer  # noqa: E402

from tests.support.processes import redis_server  # noqa: E402

CALLS = 2000
MEMBERS = 10


async def measure(name: str, layer: object) -> None:
    channels = [await layer.new_channel() for _ in range(MEMBERS)]  # type: ignore[attr-defined]
    for channel in channels:
        await layer.group_add("bench", channel)  # type: ignore[attr-defined]
    times = []
    start = time.perf_counter()
    for i in range(CALLS):
        t0 = time.perf_counter()
        await layer.group_send("bench", {"type": "room.message", "n": i})  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
        if i % 50 == 49:  # drain so capacity never drops messages
            for channel in channels:
                for _ in range(50):
                    await layer.receive(channel)  # type: ignore[attr-defined]
    total = time.perf_counter() - start
    times.sort()
    sys.stdout.write(
        f"{name:<24} group_send to {MEMBERS} members: median {statistics.median(times) * 1e3:.3f} ms, "
        f"p99 {times[int(len(times) * 0.99)] * 1e3:.3f} ms; {CALLS / total:.0f} sends/s incl. receiving\n"
    )


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    redis = redis_server(tmp)
    url = str(redis.extra["url"])
    try:
        await measure("InMemoryChannelLayer", InMemoryChannelLayer(capacity=1000))
        await measure("RedisChannelLayer", RedisChannelLayer(hosts=[{"address": url}], capacity=1000))
        await measure("RedisPubSubChannelLayer", RedisPubSubChannelLayer(hosts=[{"address": url}]))
    finally:
        redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
