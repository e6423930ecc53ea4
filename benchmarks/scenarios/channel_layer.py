"""(6) Channel layer: `group_send` cost and delivery rate by group size, both Redis layers.

The probe runs on the server CPUs, Redis on the others; receiving is part of
the delivery rate (every member drains its messages), not of the send cost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import Load, Options, median_row, say
from benchmarks.stacks import Stack

LAYERS = (("RedisChannelLayer", "core"), ("RedisPubSubChannelLayer", "pubsub"))


def run(opts: Options) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        stack = Stack(Path(tmp), opts, "channel_layer")
        try:
            stack.infra()
            for name, layer in LAYERS:
                for members in (10, 100, 1000):
                    runs = []
                    for _ in range(opts.runs):
                        probe = Load("layer_probe", [
                            "--redis", stack.redis_url, "--layer", layer, "--members", str(members),
                            "--deliveries", str(opts.pick(20000, 100000)),
                        ], cpus=opts.server_cpus)
                        runs.append(probe.result())
                    row = median_row(runs, ["send_ms", "send_p99_ms", "deliveries_per_s"])
                    say(f"channel layer: {name}, {members} members: group_send {row['send_ms']} ms, "
                        f"{row['deliveries_per_s']} deliveries/s")
                    rows.append({"scenario": "channel_layer", "target": name, "members": members,
                                 "group": members, **row})
        finally:
            stack.stop()
    return rows
