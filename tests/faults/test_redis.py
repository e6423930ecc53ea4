"""Redis lost, frozen or unreachable mid-stream: every process rides it out and nothing is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.faults import (
    DeviceStream,
    Listener,
    ReadyzWatch,
    deployment,
    report,
    rss_mib,
    wait_until,
)
from tests.support.http import request
from tests.support.processes import query

pytestmark = [pytest.mark.slow, pytest.mark.faults]

MESSAGES = 5000
LISTENERS = 20


async def _stream_through_an_outage(tmp: Path, *, scenario: str, rate: float, fault_at: int,
                                    outage: float, freeze: bool) -> None:
    with deployment(tmp) as dep:
        memory_before = {name: rss_mib(proc) for name, proc in dep.procs.items()}
        listeners = [Listener(dep.web) for _ in range(LISTENERS)]
        tasks = [asyncio.create_task(listener.run()) for listener in listeners]
        try:
            await asyncio.wait_for(asyncio.gather(*(lsn.connected.wait() for lsn in listeners)), 30)
            device = await asyncio.to_thread(dep.device)
            stream = DeviceStream(device, count=MESSAGES, rate=rate)
            with ReadyzWatch(dep) as watch:
                stream.start()
                await asyncio.to_thread(wait_until, lambda: dep.stored(prefix="m-")[0] >= fault_at, timeout=120,
                                        what=f"{fault_at} stored")
                fault_started = time.monotonic()
                dep.redis_freeze() if freeze else dep.redis_kill()
                stored_at_fault = dep.stored(prefix="m-")[0]
                # During the outage: an API post is stored and answered, a new socket is served.
                await asyncio.sleep(2)
                t0 = time.monotonic()
                post_status, _ = await asyncio.to_thread(
                    request, f"{dep.web}/api/rooms/lobby/messages", method="POST",
                    body={"text": "api-during-outage"}, headers={"Authorization": f"Token {dep.stack.token}"})
                post_seconds = time.monotonic() - t0
                late = Listener(dep.web)
                listeners.append(late)
                tasks.append(asyncio.create_task(late.run()))
                await asyncio.wait_for(late.connected.wait(), 15)
                late_reconnects = late.reconnects
                await asyncio.sleep(max(0.0, outage - (time.monotonic() - fault_started)))  # the fault's length
                dep.redis_thaw() if freeze else dep.redis_start()
                back = time.monotonic()
                stored_during = dep.stored(prefix="m-")[0] - stored_at_fault
                await asyncio.to_thread(stream.done.wait, 180)
                await asyncio.to_thread(wait_until, lambda: dep.stored(prefix="m-")[0] >= MESSAGES, timeout=120,
                                        what=f"{MESSAGES} stored")
                all_stored = time.monotonic()
                seqs = {int(row[0]) for row in query(dep.stack.database_url, "SELECT seq FROM bridge_message")}  # type: ignore[call-overload]
                last = max(seqs)

                def everyone_has_all() -> bool:
                    return all(listener.seqs >= seqs for listener in listeners)

                while not everyone_has_all() and time.monotonic() - max(back, all_stored) < 60:
                    await asyncio.sleep(0.05)
                complete = time.monotonic()
                await asyncio.to_thread(wait_until, lambda: all(dep.ready(n) for n in ("web", "runmqtt", "worker")),
                                        timeout=30, what="every process ready again")
                # The reconciler ran through after Redis came back.
                await asyncio.to_thread(wait_until, lambda: dep.reconciled_seconds_ago() < time.monotonic() - back,
                                        timeout=30, what="a reconciler run after the outage")
            stored, distinct = dep.stored(prefix="m-")
            missing = [len(seqs - listener.seqs) for listener in listeners]
            stored_api, _ = dep.stored(prefix="api-during-outage")
            recovery = complete - max(back, all_stored)
            report(
                scenario, "no process exits; 5000 stored once; every listener has all (target: within "
                "10 s of Redis back, see recovery_s); /readyz shows outage and recovery; reconciler runs after",
                sent=stream.sent, stored=stored, duplicated=stored - distinct, lost=MESSAGES - distinct,
                stored_during_outage=stored_during, last_seq=last, api_post_during=post_status,
                api_post_s=post_seconds, handshake_during="served" if late_reconnects == 0 else "retried",
                listeners_complete=sum(1 for m in missing if m == 0), listener_reconnects=sum(lsn.reconnects for lsn in listeners),
                recovery_s=recovery, within_10s=recovery <= 10,
                ready_again_s={n: watch.ready_again(n, back) for n in watch.names},
                unready_seen={n: watch.went_unready(n, fault_started) for n in watch.names},
                exited=dep.exited(),
                rss_mib={n: f"{memory_before[n]:.0f}->{rss_mib(p):.0f}" for n, p in dep.procs.items() if p.popen.poll() is None},
            )
            assert dep.exited() == [], {name: dep.procs[name].output() for name in dep.exited()}
            assert (stored, distinct) == (MESSAGES, MESSAGES)
            assert post_status == 201 and stored_api == 1
            assert late_reconnects == 0  # the handshake during the outage was served, not refused
            assert missing == [0] * (LISTENERS + 1)
            # recovery_s is a figure, not a verdict: on a loaded 2-core machine the web process
            # lags the stream itself (2 s idle, 8-13 s with other suites running).
            for name in watch.names:
                assert watch.went_unready(name, fault_started), f"{name} never reported the outage"
                assert watch.ready_again(name, back) is not None, f"{name} never reported the recovery"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.long
async def test_redis_killed_and_restarted_empty_mid_stream(tmp_path: Path) -> None:
    await _stream_through_an_outage(tmp_path, scenario="redis-kill-9", rate=200, fault_at=1500,
                                    outage=8, freeze=False)


@pytest.mark.long
async def test_redis_frozen_for_30_s_mid_stream(tmp_path: Path) -> None:
    await _stream_through_an_outage(tmp_path, scenario="redis-sigstop-30s", rate=100, fault_at=1000,
                                    outage=30, freeze=True)


def test_posts_and_history_while_redis_is_black_holed(tmp_path: Path) -> None:
    """A partition between the web process and Redis (our TCP proxy swallows everything):
    posts are stored and answered without waiting on Redis, history is served, no 500."""
    with deployment(tmp_path, redis_proxy=True) as dep:
        assert dep.proxy is not None
        headers = {"Authorization": f"Token {dep.stack.token}"}
        url = f"{dep.web}/api/rooms/lobby/messages"
        assert request(url, method="POST", body={"text": "before"}, headers=headers)[0] == 201
        dep.proxy.blackhole()
        started = time.monotonic()
        latencies, statuses = [], []
        for i in range(20):
            t0 = time.monotonic()
            status, _ = request(url, method="POST", body={"text": f"during-{i}", "client_id": f"d{i}"}, headers=headers)
            latencies.append(time.monotonic() - t0)
            statuses.append(status)
        history_status, history = request(f"{url}?after=0&limit=500")
        unready = dep.readyz("web")
        dep.proxy.heal()
        dep.proxy.cut()  # the connections that lived through the black hole are stale: drop them
        ready_after = wait_until(lambda: dep.ready("web"), timeout=30, what="web ready after the partition")
        after_status, _ = request(url, method="POST", body={"text": "after"}, headers=headers)
        stored, distinct = dep.stored(prefix="during-")
        report(
            "redis-blackholed-web", "every post 201 and stored once, history 200, /readyz 503 during and 200 after",
            posts=len(statuses), created=statuses.count(201), stored=stored, duplicated=stored - distinct,
            post_latency_max_s=max(latencies), post_latency_median_s=sorted(latencies)[len(latencies) // 2],
            partition_s=time.monotonic() - started, ready_again_s=ready_after, readyz_during=unready[0],
            exited=dep.exited(),
        )
        assert statuses == [201] * 20 and after_status == 201
        assert (stored, distinct) == (20, 20)
        assert history_status == 200 and len(history["messages"]) == 21
        assert unready[0] == 503 and unready[1]["checks"]["channel_layer"]["ok"] is False
        assert dep.exited() == []
