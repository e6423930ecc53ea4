"""PostgreSQL stopped and restarted mid-stream: no process exits, nothing is acknowledged
that was not stored, everything is stored once and published after; API and WebSocket
clients get `unavailable` meanwhile."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.faults import (
    DeviceStream,
    ReadyzWatch,
    RoomWatcher,
    deployment,
    report,
    wait_until,
)
from tests.support.http import request
from tests.support.postgres import postgres_restart, postgres_server, postgres_stop
from tests.support.processes import query

pytestmark = [pytest.mark.slow, pytest.mark.faults]

MESSAGES, RATE, FAULT_AT, OUTAGE, API_POSTS = 1500, 100.0, 500, 8.0, 20
PROCESSES = ("web", "runmqtt", "worker")


def socket(dep: Any) -> ClientConnection:
    """A script's socket on the room, signed in with a token on the handshake."""
    return connect(dep.web.replace("http://", "ws://") + "/ws/rooms/lobby/", open_timeout=10,
                   additional_headers={"Origin": dep.web, "Authorization": f"Token {dep.stack.token}"})


def answer(sock: ClientConnection) -> dict[str, Any]:
    """The next frame that answers what this socket sent (an ack or an error), skipping fan-out."""
    while True:
        frame: dict[str, Any] = json.loads(sock.recv(timeout=30))
        if frame["type"] in ("ack", "error"):
            return frame


def test_postgres_stopped_and_restarted_mid_stream(tmp_path: Path) -> None:
    postgres = postgres_server(tmp_path)
    try:
        with deployment(tmp_path, DATABASE_URL=str(postgres.extra["url"])) as dep:
            watcher = RoomWatcher(dep.broker.port)
            wait_until(lambda: watcher.subscriptions >= 1, timeout=10, what="the watcher subscribed")
            device = dep.device()
            stream = DeviceStream(device, count=MESSAGES, rate=RATE)
            answers: list[tuple[int, object]] = []
            with ReadyzWatch(dep) as watch:
                stream.start()
                wait_until(lambda: dep.stored(prefix="m-")[0] >= FAULT_AT, timeout=60, what=f"{FAULT_AT} stored")
                sock = socket(dep)  # open before the outage: joined (the presence frames end the
                # handshake's work) and live (a message of the stream after them)
                seen: list[str] = []
                while seen[-2:] != ["presence", "message"]:
                    kind = json.loads(sock.recv(timeout=30))["type"]
                    if kind != (seen[-1] if seen else None):
                        seen.append(kind)
                postgres_stop(postgres)
                stopped = time.monotonic()
                # Over WebSocket: a frame sent meanwhile gets an `unavailable` error and the socket
                # stays open; a new socket is refused the same way and closed with 1013 (try again).
                sock.send(json.dumps({"type": "message", "text": "ws-during", "client_id": "ws-during"}))
                during = answer(sock)
                late = socket(dep)
                refused = json.loads(late.recv(timeout=30))
                with pytest.raises(ConnectionClosed):
                    late.recv(timeout=30)
                late_close = late.close_code
                # API posts while it is down: each either stored (201) or refused, never both.
                for i in range(API_POSTS):
                    answers.append(request(f"{dep.web}/api/rooms/lobby/messages", method="POST",
                                           body={"text": f"api-{i}", "client_id": f"api-{i}"},
                                           headers={"Authorization": f"Token {dep.stack.token}"}))
                    time.sleep(0.1)
                time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
                postgres = postgres_restart(postgres)
                back = time.monotonic()
                assert stream.done.wait(120), "the device's stream was not acknowledged"
                sock.send(json.dumps({"type": "message", "text": "ws-during", "client_id": "ws-during"}))
                after = answer(sock)  # the same socket, sent again once the database is back
                sock.close()
                wait_until(lambda: dep.stored(prefix="m-")[0] >= MESSAGES, timeout=60, what=f"{MESSAGES} stored")
                all_seqs = {int(r[0]) for r in query(dep.stack.database_url, "SELECT seq FROM bridge_message")}  # type: ignore[call-overload]
                took = wait_until(lambda: watcher.seqs() >= all_seqs, timeout=60,
                                  what="every room message on rooms/lobby/messages")
                wait_until(lambda: all(dep.ready(n) for n in PROCESSES), timeout=30, what="every process ready")
            stored, distinct = dep.stored(prefix="m-")
            statuses = [status for status, _ in answers]
            accepted = {f"api-{i}" for i, status in enumerate(statuses) if status == 201}
            api_rows = {str(r[0]) for r in query(dep.stack.database_url,
                                                 "SELECT text FROM bridge_message WHERE text LIKE ?", ("api-%",))}
            refusals = sorted({(status, str(body.get("error", {}).get("code")) if isinstance(body, dict) else "?")
                               for status, body in answers if status != 201})
            firsts = list(dict.fromkeys(watcher.arrived))
            report(
                "postgres-restart",
                "no process exits; device messages stored once, acknowledged only once stored; an API post "
                "is 201 only if stored; a WebSocket frame meanwhile gets `unavailable` on an open socket, a "
                "new socket `unavailable` and 1013; every room message on MQTT after; /readyz shows outage "
                "and recovery",
                sent=stream.sent, stored=stored, duplicated=stored - distinct, lost=MESSAGES - distinct,
                outage_s=OUTAGE, api_201=len(accepted), api_refused=refusals, api_201_not_stored=len(accepted - api_rows),
                ws_frame_during=during.get("code"), ws_handshake_during=(refused.get("code"), late_close),
                room_messages=len(all_seqs), on_mqtt=len(watcher.seqs() & all_seqs),
                mqtt_duplicates=len(watcher.arrived) - len(firsts), all_on_mqtt_after_back_s=took,
                unready_seen={n: watch.went_unready(n, stopped) for n in PROCESSES},
                ready_again_s={n: watch.ready_again(n, back) for n in PROCESSES}, exited=dep.exited(),
            )
            assert dep.exited() == [], {name: dep.procs[name].output() for name in dep.exited()}
            assert (during["type"], during["code"]) == ("error", "unavailable"), during
            assert (refused["type"], refused["code"], late_close) == ("error", "unavailable", 1013), refused
            assert after["type"] == "ack", after
            assert len(query(dep.stack.database_url, "SELECT id FROM bridge_message WHERE text = 'ws-during'")) == 1
            assert (stored, distinct) == (MESSAGES, MESSAGES)
            assert accepted <= api_rows, "an API post was answered 201 and not stored"
            assert all(status in (201, 503) for status in statuses), answers
            assert watcher.seqs() >= all_seqs
            assert firsts == sorted(firsts), "first arrivals out of order"
            for name in PROCESSES:
                assert watch.went_unready(name, stopped), f"{name} never reported the outage"
                assert watch.ready_again(name, back) is not None, f"{name} never reported the recovery"
            device.close()
            watcher.close()
    finally:
        postgres.stop()
        shutil.rmtree(str(postgres.extra["cleanup"]), ignore_errors=True)
