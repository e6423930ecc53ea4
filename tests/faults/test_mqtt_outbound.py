"""Room messages reach MQTT at least once: a runmqtt killed before the broker's PUBACKs
loses nothing on `rooms/<room>/messages`."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import pytest

from tests.support.faults import deployment, report, wait_until
from tests.support.http import request
from tests.support.processes import query

pytestmark = [pytest.mark.slow, pytest.mark.faults]

BEFORE, DURING = 50, 100


def _cursor(database_url: str) -> tuple[int, str]:
    rows = query(database_url, "SELECT c.seq, c.lease_owner FROM bridge_edgecursor c JOIN bridge_room r "
                 "ON r.id = c.room_id WHERE c.edge = 'mqtt' AND r.slug = 'lobby'")
    return int(rows[0][0]), str(rows[0][1])  # type: ignore[call-overload]


def test_runmqtt_killed_between_claim_and_puback_then_restarted_publishes_every_seq_in_order(
    tmp_path: Path,
) -> None:
    with deployment(tmp_path, mqtt_proxy=True) as dep:
        assert dep.mqtt_proxy is not None
        listener = dep.device()
        listener.subscribe("rooms/lobby/messages")
        arrived: list[int] = []

        def drain() -> set[int]:
            while True:
                try:
                    _, payload = listener.messages.get_nowait()
                except queue.Empty:
                    return set(arrived)
                arrived.append(json.loads(payload)["seq"])

        url = f"{dep.web}/api/rooms/lobby/messages"
        headers = {"Authorization": f"Token {dep.stack.token}"}

        def post(i: int) -> None:
            status, _ = request(url, method="POST", body={"text": f"o-{i}", "client_id": f"o-{i}"}, headers=headers)
            assert status == 201

        for i in range(BEFORE):
            post(i)
        wait_until(lambda: len(drain()) >= BEFORE, timeout=30, what="the first messages on MQTT")
        base, _ = _cursor(dep.stack.database_url)

        # The broker's answers stop coming (the link black-holes): runmqtt claims, hands to
        # paho, and waits for PUBACKs that never come. Then it is killed.
        dep.mqtt_proxy.blackhole()
        for i in range(BEFORE, BEFORE + DURING):
            post(i)
        last_seq = BEFORE + DURING
        wait_until(lambda: _cursor(dep.stack.database_url)[1] == "bridge-faults", timeout=30,
                   what="runmqtt holding the room's lease, waiting for PUBACKs")
        dep.procs["runmqtt"].kill()
        cursor_after_kill, _ = _cursor(dep.stack.database_url)
        seen_before_restart = len(drain())

        dep.mqtt_proxy.heal()
        dep.runmqtt_start("runmqtt-again")
        took = wait_until(lambda: max(drain(), default=0) >= last_seq and len(set(arrived)) >= last_seq,
                          timeout=60, what="every seq on rooms/lobby/messages")
        time.sleep(1)  # a late duplicate would show here
        drain()
        firsts = list(dict.fromkeys(arrived))  # each seq at its first arrival, in arrival order
        report(
            "mqtt-outbound-kill-before-puback",
            "every seq on rooms/<room>/messages after a kill -9 between claim and PUBACK, first arrivals in order",
            posted=last_seq, cursor_at_kill=cursor_after_kill, seen_before_restart=seen_before_restart,
            arrived=len(arrived), distinct=len(set(arrived)), duplicated=len(arrived) - len(set(arrived)),
            restart_to_all_seconds=took, exited=dep.exited(),
        )
        assert cursor_after_kill == base, "the cursor moved past messages the broker never acknowledged"
        assert set(arrived) >= set(range(1, last_seq + 1))
        assert firsts == sorted(firsts), "first arrivals out of order"
        assert _cursor(dep.stack.database_url) == (last_seq, "")
        assert dep.exited() == []
        listener.close()
