"""MQTT ingest: messages per second one runmqtt stores and publishes back on rooms/<room>/messages.

Real mosquitto, one runmqtt process, SQLite; the load is `simulate_devices`.
Run: python -m benchmarks.mqtt_ingest [--devices 5] [--messages 1000] [--redis]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.mosquitto import mosquitto_server
from tests.support.mqtt_device import TestDevice
from tests.support.processes import bridge_env, manage, query, redis_server, start_manage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--messages", type=int, default=1000, help="per device")
    parser.add_argument("--redis", action="store_true", help="redis channel layer (default in-memory)")
    args = parser.parse_args()
    total = args.devices * args.messages
    names = [f"sim-{n}" for n in range(args.devices)]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = mosquitto_server(tmp / "mosquitto", {**{n: "sim" for n in names}, "listener": "sim"})
        redis = redis_server(tmp) if args.redis else None
        extra = {"REDIS_URL": str(redis.extra["url"])} if redis else {}
        env = bridge_env(tmp, MQTT_URL=broker.bridge_url, LOG_LEVEL="WARNING", **extra)
        bridge = None
        try:
            manage(["migrate", "--noinput", "-v0"], env=env)
            manage(["rooms", "add", "lobby"], env=env)
            for name in names:
                manage(["devices", "add", name, "--room", "lobby"], env=env)
            bridge = start_manage("runmqtt", ["runmqtt", "--client-id", "bridge-bench"], env=env, log_dir=tmp)
            listener = TestDevice(broker.port, "listener", "sim")
            listener.subscribe("rooms/lobby/messages")
            published = threading.Semaphore(0)
            listener.client.on_message = lambda c, u, m: published.release()
            time.sleep(2)  # runmqtt connects and subscribes

            started = time.monotonic()
            manage(
                ["simulate_devices", "--url", f"mqtt://127.0.0.1:{broker.port}", "--password", "sim",
                 "--devices", str(args.devices), "--messages", str(args.messages),
                 "--telemetry-every", "0"],
                env=env, timeout=900,
            )
            sent = time.monotonic() - started
            url = env["DATABASE_URL"]
            while int(query(url, "SELECT count(*) FROM bridge_message")[0][0]) < total:  # type: ignore[call-overload]
                time.sleep(0.05)
            stored = time.monotonic() - started
            for _ in range(total):
                if not published.acquire(timeout=120):
                    sys.exit("not every message was published back")
            fanned = time.monotonic() - started
            listener.close()
        finally:
            if bridge is not None:
                bridge.stop()
            if redis is not None:
                redis.stop()
            broker.stop()

    layer = "redis" if args.redis else "in-memory"
    print(f"{total} messages from {args.devices} devices, one runmqtt, SQLite, {layer} channel layer")
    print(f"  devices published (broker acks): {sent:6.2f} s")
    print(f"  stored:                          {stored:6.2f} s  {total / stored:7.0f} msg/s")
    print(f"  stored and published back:       {fanned:6.2f} s  {total / fanned:7.0f} msg/s")


if __name__ == "__main__":
    main()
