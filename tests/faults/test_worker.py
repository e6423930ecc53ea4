"""A worker killed in the middle of a task: another runs it again within the lease, once."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.faults import report, wait_until
from tests.support.http import request
from tests.support.postgres import postgres_server
from tests.support.processes import (
    Proc,
    free_port,
    query,
    redis_server,
    start_manage,
    wait_for_port,
)
from tests.support.stack import Stack, provision

pytestmark = [pytest.mark.slow, pytest.mark.faults]

LEASE = 6  # BRIDGE_TASK_LEASE for this test (seconds); renewed every LEASE / 3 while a task runs


def worker(stack: Stack, name: str) -> tuple[Proc, int]:
    port = free_port()
    proc = start_manage(name, ["runworker", "bridge-tasks", "--ops-port", str(port)], env=stack.env, log_dir=stack.tmp)
    stack.procs.append(proc)
    wait_for_port(port, proc=proc)
    wait_until(lambda: request(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=30, what=f"{name} ready")
    return proc, port


def test_a_killed_workers_task_runs_again_exactly_once_within_the_lease(tmp_path: Path) -> None:
    postgres = postgres_server(tmp_path)
    redis = redis_server(tmp_path)
    stack = provision(tmp_path, DATABASE_URL=str(postgres.extra["url"]), REDIS_URL=str(redis.extra["url"]),
                      BRIDGE_TASK_LEASE=str(LEASE), BRIDGE_RECONCILE_INTERVAL="2")
    dsn = str(postgres.extra["url"]).replace("postgres://", "postgresql://", 1)
    try:
        room = int(query(stack.database_url, "SELECT id FROM bridge_room WHERE slug = 'lobby'")[0][0])  # type: ignore[call-overload]
        with psycopg.connect(dsn) as blocker:
            # The task will wait on this row lock: the first worker is mid-task when it is killed.
            blocker.execute("SELECT id FROM bridge_room WHERE id = %s FOR UPDATE", (room,))
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute(
                    "INSERT INTO bridge_task (name, key, args, state, due_at, attempts, runs, last_error, created)"
                    " VALUES ('room_stats', %s, %s, 'pending', now(), 0, 0, '', now())",
                    (f"room_stats:{room}", f'{{"room": {room}}}'),
                )
            first, _ = worker(stack, "worker-1")
            state = lambda: query(stack.database_url, "SELECT state, runs FROM bridge_task")[0]  # noqa: E731
            wait_until(lambda: state()[0] == "running", timeout=30, what="the first worker claimed the task")
            second, _ = worker(stack, "worker-2")
            # Alive and renewing: longer than one lease, and nobody takes the task over.
            time.sleep(LEASE * 1.5)
            held = state()
            first.kill()
            killed = time.monotonic()
            blocker.rollback()  # the lock goes; only a new run can finish the task now
        wait_until(lambda: state()[0] == "done", timeout=LEASE * 4, what="the task done by the second worker")
        rerun = time.monotonic() - killed
        rows = query(stack.database_url, "SELECT state, runs, attempts FROM bridge_task")
        report(
            "worker-killed-mid-task", f"re-run once within the lease ({LEASE} s here; BRIDGE_TASK_LEASE, 15 s by default)",
            held_while_alive=held, rerun_after_kill_s=rerun, rows=rows, second_alive=second.popen.poll() is None,
        )
        assert held == ("running", 0)  # a live worker's long task is not taken over
        assert rows == [("done", 1, 1)]  # one row, one completed run
        assert rerun <= LEASE + 2
    finally:
        stack.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(str(postgres.extra["cleanup"]), ignore_errors=True)
