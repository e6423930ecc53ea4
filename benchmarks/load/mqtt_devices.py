"""Simulated devices publishing stamped QoS 1 chat messages with ids, paced or as fast as possible.

Each device is its own paho client (its own account, as the broker's ACL
wants); one loop spreads the messages over them round-robin at `--rate`
(0: no pacing, only the broker's acknowledgements hold them back).
Prints one JSON line when the broker has acknowledged every message: how long
publishing took, the rate achieved (below `--rate` when this process could not
keep the pace) and the CPU seconds it used.
Run: python -m benchmarks.load.mqtt_devices --port 1883 --devices 10 --count 5000 --rate 0 --tag r1
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

from benchmarks.load.stats import stamp_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--name", default="sim")
    parser.add_argument("--password", default="sim")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--count", type=int, required=True, help="messages in all")
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second in all; 0: unpaced")
    parser.add_argument("--tag", default="")
    parser.add_argument("--inflight", type=int, default=100)
    args = parser.parse_args()

    acked = threading.Semaphore(0)
    clients = []
    for n in range(args.devices):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.name}-{n}-{args.tag}")
        client.username_pw_set(f"{args.name}-{n}", args.password)
        client.max_inflight_messages_set(args.inflight)
        client.on_publish = lambda *a: acked.release()
        client.connect("127.0.0.1", args.port)
        client.loop_start()
        clients.append(client)
    for client in clients:
        while not client.is_connected():
            time.sleep(0.01)

    started = time.monotonic()
    for i in range(args.count):
        if args.rate:
            due = started + i / args.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        device = i % args.devices
        body = {"text": stamp_text(time.monotonic(), args.tag, i), "id": f"{args.tag}-{i}"}
        clients[device].publish(f"devices/{args.name}-{device}/rooms/{args.room}", json.dumps(body), qos=1)
    sent = time.monotonic() - started
    for _ in range(args.count):
        if not acked.acquire(timeout=120):
            break
    acks = time.monotonic() - started
    for client in clients:
        client.disconnect()
        client.loop_stop()
    achieved = args.count / sent if sent > 0 else None
    sys.stdout.write(json.dumps({
        "sent": args.count, "publish_s": round(sent, 3), "acked_s": round(acks, 3),
        "achieved_per_s": round(achieved, 1) if achieved else None, "cpu_s": round(time.process_time(), 3),
    }) + "\n")


if __name__ == "__main__":
    main()
