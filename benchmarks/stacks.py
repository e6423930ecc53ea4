"""Real servers for the scenarios: the bridge's processes, the peers', and what they share.

Everything listens on loopback on free ports, lives in a temp dir, and is
stopped by its own id (the tests' helpers in tests/support do the starting).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import Options, pin, say
from tests.support.mosquitto import BRIDGE_PASSWORD, BRIDGE_USER, Mosquitto, mosquitto_server
from tests.support.postgres import postgres_server
from tests.support.processes import (
    REPO,
    Proc,
    bridge_env,
    free_port,
    manage,
    redis_server,
    start,
    wait_for_port,
)

DEVICE_PASSWORD = "sim"
PEER_PACKAGES = ["mqttasgi", "channels-redis"]


@dataclass
class Stack:
    """What one scenario target runs; `stop` ends it all, newest first."""

    tmp: Path
    opts: Options
    name: str
    procs: list[Proc] = field(default_factory=list)
    broker: Mosquitto | None = None
    redis_url: str = ""
    database_url: str = ""

    def stop(self) -> None:
        """Everything stopped; the processes' logs kept under <out>/logs/<name>/ to read after."""
        for proc in reversed(self.procs):
            proc.stop()
            cleanup = proc.extra.get("cleanup")
            if isinstance(cleanup, Path):
                shutil.rmtree(cleanup, ignore_errors=True)
        if self.broker is not None:
            self.broker.stop()
        logs = self.opts.out / "logs" / self.name
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        for log in self.tmp.rglob("*.log"):
            shutil.copy(log, logs / log.name)

    def infra(self, *, redis: bool = True, devices: int = 0, postgres: bool = False) -> None:
        """Redis, mosquitto with `devices` accounts sim-0..., PostgreSQL: on the load CPUs."""
        if redis:
            proc = redis_server(self.tmp)
            self.procs.append(proc)
            pin(proc.popen.pid, self.opts.load_cpus)
            self.redis_url = str(proc.extra["url"])
        if devices:
            users = {f"sim-{n}": DEVICE_PASSWORD for n in range(devices)}
            self.broker = mosquitto_server(self.tmp / "mosquitto", users)
            assert self.broker.proc is not None
            pin(self.broker.proc.popen.pid, self.opts.load_cpus)
        if postgres:
            proc = postgres_server(self.tmp)
            self.procs.append(proc)
            pin(proc.popen.pid, self.opts.load_cpus)
            self.database_url = str(proc.extra["url"])

    def server(self, name: str, argv: list[str], env: dict[str, str], port: int | None = None) -> Proc:
        """A process under test, on the server CPUs; waits for its port if it has one."""
        proc = start(name, argv, log_dir=self.tmp, env=env)
        self.procs.append(proc)
        if port is not None:
            wait_for_port(port, proc=proc, timeout=60)
        pin(proc.popen.pid, self.opts.server_cpus)
        return proc

    # --- the bridge -------------------------------------------------------------

    def bridge_env(self, **extra: str) -> dict[str, str]:
        # Production settings (DEBUG off: no query log), but plain-HTTP cookies on loopback
        # and devices registered on first use, as the development default does.
        overrides = {"DEBUG": "0", "SECURE_COOKIES": "0", "MQTT_UNKNOWN_DEVICES": "register",
                     "LOG_LEVEL": "WARNING", "ALLOWED_HOSTS": "127.0.0.1,localhost", **extra}
        if self.redis_url:
            overrides["REDIS_URL"] = self.redis_url
        if self.database_url:
            overrides["DATABASE_URL"] = self.database_url
        if self.broker is not None:
            overrides["MQTT_URL"] = self.broker.bridge_url
        env = bridge_env(self.tmp, **overrides)
        manage(["migrate", "--noinput", "-v0"], env=env)
        manage(["demo"], env=env)  # room lobby, user demo/demo
        return env

    def bridge_asgi(self, env: dict[str, str], name: str = "uvicorn") -> str:
        port = free_port()
        self.server(name, [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host",
                           "127.0.0.1", "--port", str(port), "--lifespan", "off", "--log-level",
                           "warning"], env, port)
        return f"127.0.0.1:{port}"

    def bridge_runmqtt(self, env: dict[str, str], client_id: str = "bridge-bench") -> Proc:
        return self.server(f"runmqtt-{client_id}",
                           [sys.executable, "manage.py", "runmqtt", "--client-id", client_id], env)

    # --- the peers -------------------------------------------------------------

    def peer_env(self, layer: str = "core") -> dict[str, str]:
        env = {
            "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "benchmarks.peers.settings",
            "PEER_DATABASE": str(self.tmp / "peer.sqlite3"), "PEER_REDIS_URL": self.redis_url,
            "PEER_LAYER": layer,
        }
        done = subprocess.run([sys.executable, "-m", "django", "migrate", "--run-syncdb", "-v0"],
                              cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"peer migrate failed:\n{done.stderr}")
        return env

    def peer_asgi(self, env: dict[str, str], server: str) -> str:
        """The tutorial consumer on Daphne or uvicorn."""
        port = free_port()
        if server == "daphne":
            argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                    "benchmarks.peers.asgi:application"]
        else:
            argv = [sys.executable, "-m", "uvicorn", "benchmarks.peers.asgi:application", "--host",
                    "127.0.0.1", "--port", str(port), "--lifespan", "off", "--log-level", "warning"]
        self.server(f"peer-{server}", argv, env, port)
        return f"127.0.0.1:{port}"

    def peer_mqttasgi(self, env: dict[str, str]) -> Proc:
        assert self.broker is not None
        binary = peer_venv(self.opts) / "bin" / "mqttasgi"
        return self.server("mqttasgi", [
            str(binary), "-H", "127.0.0.1", "-p", str(self.broker.port), "-U", BRIDGE_USER,
            "-P", BRIDGE_PASSWORD, "-i", "peer-mqttasgi", "-v", "1", "benchmarks.peers.asgi:application",
        ], {**env, "PEER_MQTT": "1"})


def peer_venv(opts: Options) -> Path:
    """mqttasgi in a virtualenv of its own (its pins must not touch ours), made once."""
    path = opts.out / "mqttasgi-venv"
    marker = path / ("installed-" + "-".join(PEER_PACKAGES))
    if not marker.exists():
        say(f"installing {', '.join(PEER_PACKAGES)} into {path} (once)")
        venv.create(path, with_pip=True, clear=True)
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", *PEER_PACKAGES], check=True,
                       cwd=path)
        marker.touch()
    return path
