"""Real servers for the scenarios: the bridge's processes, the peers', and what they share.

Everything listens on loopback on free ports, lives in a temp dir, and is
stopped by its own id (the tests' helpers in tests/support do the starting).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import Options, pin, say
from protocols.websocket.server import WS_PROTOCOL
from tests.support.http import request
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
    wait_until,
)
from tests.support.prosody import Prosody

DEVICE_PASSWORD = "sim"
OCCUPANT_PASSWORD = "occupant"
# Prosody's per-client bandwidth in the shipped config (50 kB/s, a few hundred messages a
# second) would be what the XMPP scenarios measure: raised, as a server for load would be.
BENCH_C2S_RATE = "10mb/s"
PEER_PACKAGES = ["mqttasgi", "channels-redis"]


@dataclass
class Stack:
    """What one scenario target runs; `stop` ends it all, newest first."""

    tmp: Path
    opts: Options
    name: str
    procs: list[Proc] = field(default_factory=list)
    broker: Mosquitto | None = None
    xmpp: Prosody | None = None
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

    def infra(self, *, redis: bool = True, devices: int = 0, postgres: bool = False,
              occupants: int = 0) -> None:
        """Redis, mosquitto with `devices` accounts sim-0..., PostgreSQL, Prosody with
        `occupants` accounts occ-0...: on the load CPUs."""
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
        if occupants:
            self.xmpp = Prosody(base=self.tmp / "prosody", extra_env={"PROSODY_C2S_RATE": BENCH_C2S_RATE,
                                                                        "PROSODY_LOG_LEVEL": "warn"})
            for n in range(occupants):
                self.xmpp.register(f"occ-{n}", OCCUPANT_PASSWORD)
            proc = self.xmpp.start()
            self.procs.append(proc)
            pin(proc.popen.pid, self.opts.load_cpus)

    def occupant_args(self, first: int, count: int) -> list[str]:
        """xmpp_occupants' arguments for accounts occ-<first>... in the bench room."""
        assert self.xmpp is not None
        return ["--port", str(self.xmpp.c2s_port), "--ca", str(self.xmpp.ca_file), "--domain",
                self.xmpp.domain, "--password", OCCUPANT_PASSWORD, "--room", f"lobby@{self.xmpp.muc}",
                "--accounts", ",".join(f"occ-{n}" for n in range(first, first + count))]

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
        if self.xmpp is not None:
            # Occupants send as fast as the scenario asks: no per-account rate limit.
            overrides.update(self.xmpp.bridge_settings(), XMPP_RATE="0")
        overrides.update(self.opts.bridge_env)  # `--bridge-env`, last: what an A/B run varies
        env = bridge_env(self.tmp, **overrides)
        manage(["migrate", "--noinput", "-v0"], env=env)
        manage(["demo"], env=env)  # room lobby, user demo/demo
        return env

    def bridge_asgi(self, env: dict[str, str], name: str = "uvicorn") -> str:
        port = free_port()
        self.server(name, [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host",
                           "127.0.0.1", "--port", str(port), "--lifespan", "off", "--log-level",
                           "warning", "--ws", WS_PROTOCOL, "--ws-per-message-deflate", "false"], env, port)
        return f"127.0.0.1:{port}"

    def bridge_runmqtt(self, env: dict[str, str], client_id: str = "bridge-bench") -> Proc:
        """One runmqtt, returned once its /readyz answers 200 (subscribed to the broker)."""
        ops = free_port()
        proc = self.server(f"runmqtt-{client_id}", [sys.executable, "manage.py", "runmqtt", "--client-id",
                                                    client_id, "--ops-port", str(ops)], env)
        wait_until(lambda: _answers(f"http://127.0.0.1:{ops}/readyz"), proc=proc,
                   what=f"runmqtt {client_id} /readyz")
        pin(proc.popen.pid, self.opts.server_cpus)  # its threads started meanwhile
        return proc

    def bridge_runxmpp(self, env: dict[str, str], room: str = "lobby") -> Proc:
        """runxmpp, once its /readyz says `room` is bridged (joined, configured, caught up)."""
        ops = free_port()
        proc = self.server("runxmpp", [sys.executable, "manage.py", "runxmpp", "--ops-port", str(ops)], env)
        deadline = time.monotonic() + 60
        while not _room_ready(ops, room):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runxmpp did not bridge {room}:\n{proc.output()}")
            time.sleep(0.1)
        pin(proc.popen.pid, self.opts.server_cpus)  # its threads started meanwhile
        return proc

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

    def peer_xmpp_echo(self, to: str, room: str = "lobby") -> Proc:
        """The bare slixmpp echo component, as the bridge's component, once it is in `room`."""
        assert self.xmpp is not None
        ready = self.tmp / "xmpp-echo.ready"
        proc = self.server("xmpp-echo", [
            sys.executable, "-m", "benchmarks.peers.xmpp_echo", "--jid", self.xmpp.component,
            "--secret", self.xmpp.secret, "--port", str(self.xmpp.component_port),
            "--room", f"{room}@{self.xmpp.muc}", "--to", to, "--ready-file", str(ready),
        ], {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        _wait_file(ready, proc)
        return proc

    def peer_mqttasgi(self, env: dict[str, str]) -> Proc:
        assert self.broker is not None
        binary = peer_venv(self.opts) / "bin" / "mqttasgi"
        return self.server("mqttasgi", [
            str(binary), "-H", "127.0.0.1", "-p", str(self.broker.port), "-U", BRIDGE_USER,
            "-P", BRIDGE_PASSWORD, "-i", "peer-mqttasgi", "-v", "1", "benchmarks.peers.asgi:application",
        ], {**env, "PEER_MQTT": "1"})


def _wait_file(path: Path, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not get ready:\n{proc.output()}")
        time.sleep(0.05)


def _room_ready(ops_port: int, room: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/readyz", timeout=5) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while something is not ready yet
        body = json.loads(exc.read())
    except OSError:
        return False  # not listening yet
    check = body.get("checks", {}).get(f"xmpp:room:{room}")
    return bool(check and check.get("ok"))


def _answers(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except OSError:
        return False  # not listening yet


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
