"""The embedded MQTT broker of `runbridge`: mosquitto where it is installed, else amqtt in-process.

Development only: anonymous clients, loopback, nothing installed system-wide
needed (amqtt is a pip dependency). Production points MQTT_URL at a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT = 10.0
# Runs mosquitto and ends it when runbridge ends (a script: standard library only).
GUARD = str(Path(__file__).with_name("broker_guard.py"))


class BrokerError(OSError):
    """The embedded broker cannot start (port busy, binary failing)."""


@dataclass(frozen=True)
class EmbeddedBroker:
    host: str
    port: int
    # "mosquitto" or "amqtt"; amqtt speaks MQTT 3.1.1 only (no shared subscriptions).
    kind: str

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot run the embedded MQTT broker on {host}:{port}: {exc.strerror} "
                "(another broker? use --mqtt-port N, or set MQTT_URL to use it)"
            ) from exc


def find_mosquitto() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def plan_broker(host: str, port: int) -> tuple[EmbeddedBroker, str | None]:
    """Which broker will run (and mosquitto's path): decided before anything starts."""
    check_port_free(host, port)
    binary = find_mosquitto()
    return EmbeddedBroker(host=host, port=port, kind="mosquitto" if binary else "amqtt"), binary


@contextlib.asynccontextmanager
async def embedded_broker(broker: EmbeddedBroker, binary: str | None) -> AsyncIterator[EmbeddedBroker]:
    """Run the planned broker for as long as the context is open."""
    if binary is not None:
        async with _mosquitto(binary, broker.host, broker.port) as running:
            yield running
    else:
        async with _amqtt(broker.host, broker.port) as running:
            yield running


@contextlib.asynccontextmanager
async def _mosquitto(binary: str, host: str, port: int) -> AsyncIterator[EmbeddedBroker]:
    with tempfile.TemporaryDirectory(prefix="bridge-mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nmax_inflight_messages 1000\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            # "information" carries the "... running" line that says it listens.
            "log_type information\n"
        )
        # Through the guard, which ends mosquitto when this process ends, even by kill -9:
        # its stdin is a pipe from us that nobody writes to (see broker_guard.py).
        proc = await asyncio.create_subprocess_exec(
            sys.executable, GUARD, binary, "-c", str(conf),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        drain: asyncio.Task[None] | None = None
        try:
            drain = await _wait_running(proc, host, port)
            logger.info("embedded mosquitto (guard pid %s) on %s:%s", proc.pid, host, port)
            yield EmbeddedBroker(host=host, port=port, kind="mosquitto")
        finally:
            if drain is not None:
                drain.cancel()
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()


async def _wait_running(proc: asyncio.subprocess.Process, host: str, port: int) -> asyncio.Task[None]:
    """mosquitto says "... running" once it listens; an early exit says why it could not."""
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                raw = await proc.stderr.readline()
                if not raw:
                    raise BrokerError(
                        f"mosquitto could not start on {host}:{port}: " + " ".join(lines[-3:])
                    )
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                if " running" in line:
                    break
    except TimeoutError as exc:
        raise BrokerError(f"mosquitto did not start within {START_TIMEOUT} s") from exc
    # Keep draining its log so a full pipe never blocks it.
    return asyncio.create_task(_drain(proc))


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        logger.debug("mosquitto: %s", line.decode(errors="replace").strip())


@contextlib.asynccontextmanager
async def _amqtt(host: str, port: int) -> AsyncIterator[EmbeddedBroker]:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    logger.info("embedded amqtt broker on %s:%s (MQTT 3.1.1)", host, port)
    try:
        yield EmbeddedBroker(host=host, port=port, kind="amqtt")
    finally:
        await broker.shutdown()
