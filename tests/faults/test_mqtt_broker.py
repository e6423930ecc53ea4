"""The MQTT broker `kill -9`'d and restarted mid-stream: runmqtt rides it out, stores every
device message once and publishes every room message after."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.faults import (
    DEVICE,
    DEVICE_PASSWORD,
    DeviceStream,
    ReadyzWatch,
    RoomWatcher,
    deployment,
    report,
    wait_until,
)
from tests.support.http import request
from tests.support.mqtt_device import TestDevice
from tests.support.processes import query
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.faults]

MESSAGES, RATE, FAULT_AT, OUTAGE, API_POSTS = 1500, 100.0, 500, 5.0, 20


def test_the_broker_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    with deployment(tmp_path, mqtt_proxy=True, MQTT_RECONNECT_MAX="2") as dep:
        assert dep.mqtt_proxy is not None
        bridge_link = dep.mqtt_proxy
        device_link = TcpProxy(target_port=dep.broker.port)
        device_link.start()
        watcher = RoomWatcher(dep.broker.port)
        try:
            wait_until(lambda: watcher.subscriptions >= 1, timeout=10, what="the watcher subscribed")
            device = TestDevice(device_link.port, DEVICE, DEVICE_PASSWORD, inflight=200)
            device.client.reconnect_delay_set(min_delay=1, max_delay=1)
            stream = DeviceStream(device, count=MESSAGES, rate=RATE)
            with ReadyzWatch(dep) as watch:
                stream.start()
                wait_until(lambda: dep.stored(prefix="m-")[0] >= FAULT_AT, timeout=60, what=f"{FAULT_AT} stored")
                assert dep.broker.proc is not None
                dep.broker.proc.kill()
                killed = time.monotonic()
                dep.broker.proc = None
                stored_at_kill = dep.stored(prefix="m-")[0]
                # Each party comes back in an order in which the broker has a subscriber for
                # everything (see the pass condition): links held down until then. What the
                # broker wrote before it died still arrives, as it would without the proxies
                # (cutting them lost a message the broker had acknowledged to the device).
                bridge_link.refuse(cut=False)
                device_link.refuse(cut=False)
                wait_until(lambda: bridge_link.open_connections == 0 and device_link.open_connections == 0,
                           timeout=10, what="the links to the dead broker closed")
                statuses = [
                    request(f"{dep.web}/api/rooms/lobby/messages", method="POST",
                            body={"text": f"api-{i}", "client_id": f"api-{i}"},
                            headers={"Authorization": f"Token {dep.stack.token}"})[0]
                    for i in range(API_POSTS)
                ]
                time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed)))
                dep.broker.start()
                restarted = time.monotonic()
                wait_until(lambda: watcher.subscriptions >= 2, timeout=30, what="the watcher back on the broker")
                dep.mqtt_proxy.heal()
                wait_until(lambda: dep.ready("runmqtt"), timeout=30, what="runmqtt subscribed again")
                bridge_back = time.monotonic() - restarted
                device_link.heal()
                assert stream.done.wait(120), "the device's stream did not finish"
                wait_until(lambda: dep.stored(prefix="m-")[0] >= MESSAGES, timeout=60, what=f"{MESSAGES} stored")
                all_seqs = {int(r[0]) for r in query(dep.stack.database_url, "SELECT seq FROM bridge_message")}  # type: ignore[call-overload]
                took = wait_until(lambda: watcher.seqs() >= all_seqs, timeout=60,
                                  what="every room message on rooms/lobby/messages")
            stored, distinct = dep.stored(prefix="m-")
            api_stored, _ = dep.stored(prefix="api-")
            firsts = list(dict.fromkeys(watcher.arrived))
            log = dep.procs["runmqtt"].output()
            report(
                "mqtt-broker-kill-9",
                "no process exits; every device message stored once; every room message on MQTT after, "
                "first arrivals in order; runmqtt /readyz shows the outage and the recovery",
                sent=stream.sent, stored=stored, duplicated=stored - distinct, lost=MESSAGES - distinct,
                stored_at_kill=stored_at_kill, api_posts_during=statuses.count(201), room_messages=len(all_seqs),
                on_mqtt=len(watcher.seqs() & all_seqs), mqtt_duplicates=len(watcher.arrived) - len(firsts),
                bridge_subscribed_after_restart_s=bridge_back, all_on_mqtt_s=took,
                runmqtt_unready=watch.went_unready("runmqtt", killed),
                runmqtt_ready_again_s=watch.ready_again("runmqtt", restarted),
                web_unready=watch.went_unready("web", killed), exited=dep.exited(),
            )
            assert dep.exited() == [], {name: dep.procs[name].output() for name in dep.exited()}
            assert (stored, distinct) == (MESSAGES, MESSAGES)
            assert statuses == [201] * API_POSTS and api_stored == API_POSTS
            assert watcher.seqs() >= all_seqs
            assert firsts == sorted(firsts), "first arrivals out of order"
            assert watch.went_unready("runmqtt", killed)
            assert watch.ready_again("runmqtt", restarted) is not None
            assert "Traceback" not in log, log
            device.close()
        finally:
            watcher.close()
            device_link.stop()
