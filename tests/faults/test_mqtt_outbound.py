"""Room messages reach MQTT at least once: a runmqtt killed before the broker's PUBACKs
loses nothing on `rooms/<room>/messages`, and one told to stop waits for them."""

from __future__ import annotations

import json
import queue
import signal
import time
from pathlib import Path

import pytest

from tests.support.faults import deployment, report, wait_until
from tests.support.http import request
from tests.support.mqtt_device import TestDevice
from tests.support.processes import query

pytestmark = [pytest.mark.slow, pytest.mark.faults]

BEFORE, DURING = 50, 100
LEASE = 5  # MQTT_PUBLISH_LEASE here (seconds; 30 by default)


def _cursor(database_url: str) -> tuple[int, str]:
    rows = query(database_url, "SELECT c.seq, c.lease_owner FROM bridge_edgecursor c JOIN bridge_room r "
                 "ON r.id = c.room_id WHERE c.edge = 'mqtt' AND r.slug = 'lobby'")
    return int(rows[0][0]), str(rows[0][1])  # type: ignore[call-overload]


@pytest.mark.parametrize("successor", ["bridge-faults", "bridge-faults-2"])
def test_runmqtt_killed_between_claim_and_puback_then_restarted_publishes_every_seq_in_order(
    tmp_path: Path, successor: str,
) -> None:
    """Restarted with the same client id it takes the room back at once; another runmqtt
    (another client id) takes it once the dead one's lease lapsed (MQTT_PUBLISH_LEASE)."""
    with deployment(tmp_path, mqtt_proxy=True, MQTT_PUBLISH_LEASE=str(LEASE)) as dep:
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
        # A subscriber can see a message before the PUBACK's cursor write commits.
        wait_until(lambda: _cursor(dep.stack.database_url)[0] >= max(arrived), timeout=30,
                   what="the cursor past what the broker acknowledged")
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
        dep.runmqtt_start("runmqtt-again", client_id=successor)
        took = wait_until(lambda: max(drain(), default=0) >= last_seq and len(set(arrived)) >= last_seq,
                          timeout=60, what="every seq on rooms/lobby/messages")
        time.sleep(1)  # a late duplicate would show here
        drain()
        firsts = list(dict.fromkeys(arrived))  # each seq at its first arrival, in arrival order
        report(
            f"mqtt-outbound-kill-before-puback[{'same client id' if successor == 'bridge-faults' else 'another runmqtt'}]",
            "every seq on rooms/<room>/messages after a kill -9 between claim and PUBACK, first arrivals in order",
            posted=last_seq, cursor_at_kill=cursor_after_kill, seen_before_restart=seen_before_restart,
            arrived=len(arrived), distinct=len(set(arrived)), duplicated=len(arrived) - len(set(arrived)),
            lease_s=LEASE, restart_to_all_seconds=took, exited=dep.exited(),
        )
        assert cursor_after_kill == base, "the cursor moved past messages the broker never acknowledged"
        assert set(arrived) >= set(range(1, last_seq + 1))
        assert firsts == sorted(firsts), "first arrivals out of order"
        assert _cursor(dep.stack.database_url) == (last_seq, "")
        assert dep.exited() == []
        listener.close()


def test_runmqtt_on_sigterm_waits_for_the_pubacks_of_its_batch_then_exits(tmp_path: Path) -> None:
    with deployment(tmp_path, mqtt_proxy=True, BRIDGE_SHUTDOWN_GRACE="60") as dep:
        assert dep.mqtt_proxy is not None
        listener = dep.device()
        listener.subscribe("rooms/lobby/messages")
        url = f"{dep.web}/api/rooms/lobby/messages"
        headers = {"Authorization": f"Token {dep.stack.token}"}
        dep.mqtt_proxy.blackhole()
        for i in range(DURING):
            status, _ = request(url, method="POST", body={"text": f"t-{i}", "client_id": f"t-{i}"}, headers=headers)
            assert status == 201
        wait_until(lambda: _cursor(dep.stack.database_url)[1] == "bridge-faults", timeout=30,
                   what="runmqtt holding the room's lease, waiting for PUBACKs")
        runmqtt = dep.procs["runmqtt"]
        runmqtt.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        def stopping() -> bool:
            status, body = dep.readyz("runmqtt")
            return status == 503 and "stopping" in body.get("checks", {})

        wait_until(stopping, timeout=15, what="runmqtt reporting that it is stopping")
        held = _cursor(dep.stack.database_url)
        # The link comes back as a new connection: paho sends the unanswered publishes again.
        dep.mqtt_proxy.heal()
        dep.mqtt_proxy.cut()
        code = runmqtt.popen.wait(timeout=60)
        exited_after = time.monotonic() - signalled
        after = _cursor(dep.stack.database_url)
        seqs: set[int] = set()
        wait_until(lambda: _drain_seqs(listener, seqs) >= after[0], timeout=30, what="the drained batch on MQTT")
        report(
            "mqtt-outbound-sigterm-drain",
            "SIGTERM while publishes await PUBACKs: runmqtt waits for them, moves the cursor past them, exits 0",
            posted=DURING, cursor_when_signalled=held, cursor_after_exit=after, on_mqtt=len(seqs),
            exit_code=code, exited_after_s=exited_after,
        )
        assert held[1] == "bridge-faults"  # publishes in flight when it was told to stop
        assert code == 0, runmqtt.output()
        assert after[0] > held[0] and after[1] == "", "the batch in flight was not drained"
        assert seqs >= set(range(1, after[0] + 1))
        # What it had not taken yet goes out after a restart.
        dep.runmqtt_start("runmqtt-again")
        wait_until(lambda: _drain_seqs(listener, seqs) >= DURING and max(seqs) >= DURING, timeout=30,
                   what="the rest on MQTT after the restart")
        listener.close()


def _drain_seqs(device: TestDevice, seqs: set[int]) -> int:
    while True:
        try:
            _, payload = device.messages.get_nowait()
        except queue.Empty:
            return len(seqs)
        seqs.add(json.loads(payload)["seq"])
