"""The broker floor: one plain paho subscriber counting and timing what devices publish.

Prints `ready` once subscribed, then one JSON line once `--expect` messages of
this run arrived (or none came for `--idle` seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from array import array

import paho.mqtt.client as mqtt

from benchmarks.load.stats import STAMP, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--tag", default="")
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()

    tag = f"r={args.tag};".encode()
    latencies: array = array("d")
    state = {"first": None, "last": None}
    done, subscribed = threading.Event(), threading.Event()

    def on_message(client, userdata, message):  # type: ignore[no-untyped-def]
        now = time.monotonic()
        if tag not in message.payload:
            return
        match = STAMP.search(message.payload)
        if match is None:
            return
        latencies.append(now - float(match[1]))
        state["first"] = state["first"] or now
        state["last"] = now
        if len(latencies) >= args.expect:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"floor-{args.tag}")
    client.username_pw_set(args.user, args.password)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(args.topic, qos=1)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    subscribed.wait(timeout=30)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    seen = -1
    while not done.wait(timeout=args.idle):
        if len(latencies) == seen:
            break
        seen = len(latencies)
    client.disconnect()
    client.loop_stop()
    sys.stdout.write(json.dumps(summary(latencies, first=state["first"], last=state["last"])) + "\n")


if __name__ == "__main__":
    main()
