"""`runbridge` as a person starts it: a busy port is an error before anything says it runs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, bridge_env, free_port, manage, start_manage, wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("busy", ["web", "mqtt"])
def test_a_busy_port_is_a_clear_error_and_no_running_banner(tmp_path: Path, busy: str) -> None:
    env = bridge_env(tmp_path)
    manage(["migrate", "--noinput", "-v0"], env=env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        web, mqtt = (port, free_port()) if busy == "web" else (free_port(), port)
        done = subprocess.run(
            [sys.executable, "manage.py", "runbridge", f"127.0.0.1:{web}", "--mqtt-port", str(mqtt)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode != 0
    assert "Bridge is running" not in done.stdout
    hint = "make run ADDR=" if busy == "web" else "--mqtt-port"
    assert hint in done.stderr, done.stderr[-2000:]



def test_sigterm_stops_every_service_and_the_process_exits(tmp_path: Path) -> None:
    """The embedded worker must not take SIGTERM for itself and then wait forever."""
    env = bridge_env(tmp_path)
    manage(["migrate", "--noinput", "-v0"], env=env)
    web, mqtt = free_port(), free_port()
    proc = start_manage("runbridge", ["runbridge", f"127.0.0.1:{web}", "--mqtt-port", str(mqtt)],
                        env=env, log_dir=tmp_path)
    try:
        wait_until(lambda: "Bridge is running" in proc.output(), timeout=60, proc=proc)
        proc.popen.send_signal(signal.SIGTERM)
        try:
            code = proc.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"runbridge still running 40 s after SIGTERM:\n{proc.output()}")
        assert code == 0, proc.output()
        assert "bridge stopped" in proc.output()
    finally:
        proc.kill()


def test_kill_9_of_runbridge_does_not_leave_its_mosquitto_running(tmp_path: Path) -> None:
    """The embedded mosquitto (run as root it drops to its own user) ends with runbridge,
    so the next runbridge finds its MQTT port free."""
    env = bridge_env(tmp_path)
    manage(["migrate", "--noinput", "-v0"], env=env)
    web, mqtt = free_port(), free_port()
    args = ["runbridge", f"127.0.0.1:{web}", "--mqtt-port", str(mqtt)]

    def broker_listens() -> bool:
        try:
            socket.create_connection(("127.0.0.1", mqtt), timeout=0.5).close()
        except OSError:
            return False
        return True

    def ready() -> bool:
        try:
            entries = json.loads((tmp_path / "runbridge.json").read_text())
        except (OSError, ValueError):
            return False
        return "mqtt" in entries and "embedded mosquitto" in first.output()

    first = start_manage("runbridge", args, env=env, log_dir=tmp_path)
    try:
        wait_until(ready, timeout=60, what="runbridge with its embedded mosquitto", proc=first)
        assert broker_listens()
        first.kill()
        wait_until(lambda: not broker_listens(), timeout=10, what="mosquitto gone with runbridge")
        (tmp_path / "runbridge.json").unlink(missing_ok=True)
        second = start_manage("runbridge-again", args, env=env, log_dir=tmp_path)
        try:
            wait_until(lambda: "Bridge is running" in second.output(), timeout=60, proc=second)
            assert broker_listens()
        finally:
            second.stop()
    finally:
        first.kill()
