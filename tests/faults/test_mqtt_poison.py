"""Poison from a device never wedges the MQTT edge."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import pytest

from tests.support.faults import deployment, report, wait_until
from tests.support.http import request

pytestmark = [pytest.mark.slow, pytest.mark.faults]

ROOM_MESSAGES = 300
POISON = 10


def test_a_33000_character_topic_ten_times_during_a_stream_of_room_messages(tmp_path: Path) -> None:
    with deployment(tmp_path) as dep:
        device = dep.device()
        device.subscribe("rooms/lobby/messages", "devices/sensor-1/errors")
        listener = dep.device()  # a second connection of the same device: it only listens
        listener.subscribe("rooms/lobby/messages")
        connects_before = dep.procs["runmqtt"].output().count("connected to")
        headers = {"Authorization": f"Token {dep.stack.token}"}
        url = f"{dep.web}/api/rooms/lobby/messages"
        poison_topic = "devices/sensor-1/rooms/" + "x" * 33000
        statuses: list[int] = []

        def post_all() -> None:
            for i in range(ROOM_MESSAGES):
                statuses.append(request(url, method="POST", body={"text": f"r-{i}", "client_id": f"r-{i}"}, headers=headers)[0])

        poster = threading.Thread(target=post_all)
        started = time.monotonic()
        poster.start()
        for k in range(1, POISON + 1):
            wait_until(lambda k=k: len(statuses) >= k * ROOM_MESSAGES // (POISON + 1), timeout=60, what="posts")
            device.publish(poison_topic, "poison").wait_for_publish(10)
        poster.join(120)

        received: set[str] = set()
        errors: list[bytes] = []

        def drain() -> bool:
            while True:
                try:
                    topic, payload = listener.messages.get_nowait()
                except queue.Empty:
                    break
                received.add(json.loads(payload)["text"])
            while True:
                try:
                    topic, payload = device.messages.get_nowait()
                except queue.Empty:
                    break
                if topic.endswith("/errors"):
                    errors.append(payload)
            return len({t for t in received if t.startswith("r-")}) >= ROOM_MESSAGES and len(errors) >= POISON

        wait_until(drain, timeout=60, what="every room message and every error reply")
        log = dep.procs["runmqtt"].output()
        reconnects = log.count("connected to") - connects_before
        report(
            "mqtt-poison-topic", "every room message on rooms/<room>/messages, error replies bounded, edge stays connected",
            room_messages=ROOM_MESSAGES, published_back=len({t for t in received if t.startswith("r-")}),
            poison=POISON, error_replies=len(errors), largest_error_bytes=max(len(e) for e in errors),
            bridge_reconnects=reconnects, seconds=time.monotonic() - started, exited=dep.exited(),
        )
        assert statuses == [201] * ROOM_MESSAGES
        assert {f"r-{i}" for i in range(ROOM_MESSAGES)} <= received
        assert {json.loads(e)["code"] for e in errors} <= {"invalid_topic", "room_not_found"}
        assert max(len(e) for e in errors) < 1024
        assert reconnects == 0, log
        assert "disconnected from" not in log
        assert dep.exited() == []
        device.close()
        listener.close()
