"""The processes' ops endpoints as a container healthcheck uses them (real redis, real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.http import request
from tests.support.processes import REPO, free_port, redis_server, start_manage, wait_for_port
from tests.support.stack import provision

pytestmark = pytest.mark.slow


def healthcheck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "healthcheck", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_runworker_serves_readyz_and_healthcheck_exits_by_it(tmp_path: Path) -> None:
    redis = redis_server(tmp_path)
    stack = provision(tmp_path, REDIS_URL=str(redis.extra["url"]))
    port = free_port()
    worker = start_manage("worker", ["runworker", "bridge-tasks", "--ops-port", str(port)], env=stack.env, log_dir=tmp_path)
    stack.procs.append(worker)
    try:
        wait_for_port(port, proc=worker)
        status, body = request(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and body["status"] == "ok", body
        assert body["checks"]["database"]["ok"] and body["checks"]["channel_layer"]["ok"]
        assert request(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        done = healthcheck(stack.env, "--port", str(port))
        assert done.returncode == 0 and '"status": "ok"' in done.stdout, done.stdout + done.stderr
        # Nothing listens: the healthcheck fails, with the reason on stderr.
        done = healthcheck(stack.env, "--port", str(free_port()))
        assert done.returncode == 1 and "refused" in done.stderr.lower(), done.stderr
    finally:
        stack.stop()
        redis.stop()


def test_web_readyz_reports_redis_and_healthz_stays_alive(tmp_path: Path) -> None:
    stack = provision(tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        base = stack.asgi("web")
        status, body = request(f"{base}/readyz")
        assert status == 503 and body["status"] == "unavailable" and not body["checks"]["channel_layer"]["ok"]
        assert body["checks"]["database"]["ok"]
        assert request(f"{base}/healthz") == (200, {"status": "ok"})
        assert healthcheck(stack.env, "--url", f"{base}/readyz").returncode == 1
        assert healthcheck(stack.env, "--url", f"{base}/healthz").returncode == 0
    finally:
        stack.stop()
