"""Telemetry: readings per second stored by one runmqtt, and the rollup lag of runworker bridge-telemetry.

Real mosquitto, Redis, one runmqtt and `--workers` telemetry workers on SQLite
(or PostgreSQL with --postgres). Devices publish `--readings` each, either as
fast as the broker takes them or at `--rate` readings per second in total.
Rollup lag is sampled every 50 ms as the age of the oldest reading stored but
not yet rolled up (0 when none is waiting); the figures are its median, 95th
percentile and maximum over the run, and the time from the last reading stored
to the last one rolled up.
Run: python -m benchmarks.telemetry [--devices 10] [--readings 1000] [--rate 0] [--workers 1] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.support.mosquitto import mosquitto_server
from tests.support.mqtt_device import TestDevice
from tests.support.postgres import postgres_server
from tests.support.processes import (
    bridge_env,
    manage,
    query,
    redis_server,
    start_manage,
    wait_until,
)


def _count(url: str, where: str = "") -> int:
    return int(query(url, f"SELECT count(*) FROM bridge_telemetry {where}")[0][0])  # type: ignore[call-overload]


def _lag(url: str) -> float:
    """Seconds since the oldest reading still waiting for its rollup was stored (0: none)."""
    oldest = query(url, "SELECT min(received) FROM bridge_telemetry WHERE NOT rolled_up")[0][0]
    if oldest is None:
        return 0.0
    when = oldest if isinstance(oldest, datetime) else datetime.fromisoformat(str(oldest)).replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - when).total_seconds())


def _publish(device: TestDevice, count: int, delay: float) -> None:
    items = []
    for i in range(count):
        body = {"id": f"{device.name}-{i}", "temperature": 20 + (i % 50) / 10, "env": {"hum": 40 + i % 7}}
        items.append((f"devices/{device.name}/telemetry", json.dumps(body)))
    if not delay:
        device.publish_all(items)
        return
    for topic, payload in items:
        device.publish(topic, payload)
        time.sleep(delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--readings", type=int, default=1000, help="per device")
    parser.add_argument("--rate", type=float, default=0, help="readings/s in total (0: as fast as possible)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    total = args.devices * args.readings
    names = [f"sim-{n}" for n in range(args.devices)]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = mosquitto_server(tmp / "mosquitto", {n: "sim" for n in names})
        redis = redis_server(tmp)
        pg = postgres_server(tmp) if args.postgres else None
        extra = {"DATABASE_URL": str(pg.extra["url"])} if pg else {}
        env = bridge_env(tmp, MQTT_URL=broker.bridge_url, REDIS_URL=str(redis.extra["url"]),
                         LOG_LEVEL="WARNING", MQTT_UNKNOWN_DEVICES="refuse", **extra)
        url = env["DATABASE_URL"]
        procs = []
        try:
            manage(["migrate", "--noinput", "-v0"], env=env)
            manage(["rooms", "add", "lobby"], env=env)
            for name in names:
                manage(["devices", "add", name, "--room", "lobby"], env=env)
            mqtt = start_manage("runmqtt", ["runmqtt", "--client-id", "bench"],
                                env={**env, "LOG_LEVEL": "INFO"}, log_dir=tmp)
            procs.append(mqtt)
            wait_until(lambda: "subscribed (mid" in mqtt.output(), what="runmqtt subscribed", proc=mqtt)
            for n in range(args.workers):
                procs.append(start_manage(f"telemetry-{n}", ["runworker", "bridge-telemetry"], env=env, log_dir=tmp))
            devices = [TestDevice(broker.port, name, "sim", inflight=200) for name in names]
            delay = args.devices / args.rate if args.rate else 0.0
            lags: list[float] = []
            started = time.monotonic()
            threads = [threading.Thread(target=_publish, args=(d, args.readings, delay)) for d in devices]
            for thread in threads:
                thread.start()
            stored_at = None
            while True:
                lags.append(_lag(url))
                if stored_at is None and _count(url) >= total:
                    stored_at = time.monotonic()
                if stored_at is not None and _count(url, "WHERE NOT rolled_up") == 0:
                    break
                time.sleep(0.05)
            rolled_at = time.monotonic()
            for thread in threads:
                thread.join()
            for device in devices:
                device.close()
        finally:
            for proc in reversed(procs):
                proc.stop()
            broker.stop()
            redis.stop()
            if pg is not None:
                pg.stop()
                shutil.rmtree(str(pg.extra["cleanup"]), ignore_errors=True)

    db = "PostgreSQL" if args.postgres else "SQLite"
    load = f"{args.rate:g}/s" if args.rate else "as fast as the broker takes them"
    lags.sort()
    print(f"{total} readings from {args.devices} devices ({load}), one runmqtt, "
          f"{args.workers} telemetry worker(s), {db}, Redis")
    print(f"  stored:        {stored_at - started:6.2f} s  {total / (stored_at - started):7.0f} readings/s")
    print(f"  rolled up:     {rolled_at - started:6.2f} s  (last reading stored -> rolled up: "
          f"{rolled_at - stored_at:.2f} s)")
    print(f"  rollup lag:    median {statistics.median(lags):.2f} s, "
          f"p95 {lags[int(len(lags) * 0.95) - 1]:.2f} s, max {lags[-1]:.2f} s")


if __name__ == "__main__":
    main()
