"""Real servers and our own processes for integration tests: free ports, start, wait, stop.

Every process started here is ended by its own id when the test is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protocols.websocket.server import WS_PROTOCOL

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 20.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s" + (f"\n{proc.output()}" if proc else ""))


def require_binary(name: str, *candidates: str) -> str:
    """The path of a server binary the test command installs; fail clearly if missing."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if os.path.exists(candidate) else None)
        if found:
            return found
    raise RuntimeError(f"{name} is not installed: run the README's test command (make test)")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, object] = field(default_factory=dict)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


def start(name: str, argv: list[str], *, log_dir: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
    log = log_dir / f"{name}.log"
    handle = log.open("ab")
    popen = subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        cwd=cwd or REPO,
    )
    handle.close()
    return Proc(name=name, popen=popen, log=log)


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def redis_server(log_dir: Path, *, port: int | None = None) -> Proc:
    """Started empty (no persistence); `port` to start one again where the last one was."""
    binary = require_binary("redis-server")
    port = port or free_port()
    proc = start(
        f"redis-{port}",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(log_dir)],
        log_dir=log_dir,
    )
    wait_for_port(port, proc=proc)
    proc.extra["url"] = f"redis://127.0.0.1:{port}/0"
    proc.extra["port"] = port
    return proc


def bridge_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """Environment for a `manage.py` subprocess: its own SQLite file unless told otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MQTT_", "XMPP_", "DATABASE_"))}
    env.update(
        # Not the test run's settings module, which forces the in-memory layer.
        DJANGO_SETTINGS_MODULE="project.settings",
        DEBUG="1",
        SECRET_KEY="tests-only-not-secret",
        DATABASE_URL=f"sqlite:///{tmp / 'bridge.sqlite3'}",
        PYTHONUNBUFFERED="1",
        BRIDGE_RUN_FILE=str(tmp / "runbridge.json"),  # not the checkout's var/runbridge.json
        LOG_LEVEL="INFO",
        # Tests stream thousands of messages from one sender on purpose; the rate-limit
        # and flood tests turn the limits on (bridge/ratelimit.py).
        WS_RATE="0",
        API_RATE="0",
        MQTT_RATE="0",
    )
    env.update(overrides)
    return env


def manage(args: list[str], *, env: Mapping[str, str], timeout: float = 120) -> str:
    """Run a management command to completion; its output, or a clear failure."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def start_manage(name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path) -> Proc:
    return start(name, [sys.executable, "manage.py", *args], log_dir=log_dir, env=env)


def start_asgi(name: str, port: int, *, env: Mapping[str, str], log_dir: Path) -> Proc:
    """The production way: uvicorn serving project.asgi:application."""
    proc = start(
        name,
        [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "off", "--log-level", "warning", "--ws", WS_PROTOCOL,
         "--ws-per-message-deflate", "false"],  # as runweb serves by default (WEBSOCKET_COMPRESSION)
        log_dir=log_dir, env=env,
    )
    wait_for_port(port, proc=proc)
    return proc


def query(database_url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read a subprocess's database directly (SQLite file or PostgreSQL URL)."""
    if database_url.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30)) as db:
            return list(db.execute(sql, params).fetchall())
    import psycopg

    with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1)) as db:
        return list(db.execute(sql.replace("?", "%s"), params).fetchall())


def wait_until(
    condition: Callable[[], bool], *, timeout: float = 60, what: str = "", proc: Proc | None = None
) -> None:
    """Poll `condition` until true; fail with `what` (and the log of `proc`, if it died)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)
