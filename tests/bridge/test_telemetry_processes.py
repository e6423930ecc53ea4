"""Telemetry as it runs: real mosquitto, runmqtt, Redis and `runworker bridge-telemetry` processes.

Windows are 2 s and 6 s long here (TELEMETRY_WINDOW_SHORT/LONG), so many of
them open and close while readings stream in; the rollups are checked against
what the test computes from the values it sent and the times the bridge
stored them at.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, mosquitto_server
from tests.support.mqtt_device import TestDevice
from tests.support.processes import Proc, manage, query, start, start_manage, wait_until
from tests.support.stack import Stack, provision

pytestmark = pytest.mark.slow

DEVICES = {"sensor-1": "pw-sensor-1", "sensor-2": "pw-sensor-2"}
WINDOWS = {"1m": 2, "1h": 6}
PER_DEVICE = 150
STEP = 0.05  # seconds between readings of one device: the stream lasts ~7.5 s


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = mosquitto_server(tmp_path / "mosquitto", DEVICES)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack(tmp_path: Path, broker: Mosquitto, redis_url: str, database_url: str) -> Iterator[Stack]:
    stack = provision(
        tmp_path, MQTT_URL=broker.bridge_url, REDIS_URL=redis_url, DATABASE_URL=database_url,
        MQTT_UNKNOWN_DEVICES="refuse", TELEMETRY_WINDOW_SHORT=str(WINDOWS["1m"]),
        TELEMETRY_WINDOW_LONG=str(WINDOWS["1h"]), TELEMETRY_SWEEP_INTERVAL="1",
        TELEMETRY_BATCH="40",  # many small transactions: workers interleave
    )
    for device in DEVICES:
        manage(["devices", "add", device, "--room", "lobby"], env=stack.env)
    proc = start_manage("runmqtt", ["runmqtt", "--client-id", "bridge-t1"], env=stack.env, log_dir=tmp_path)
    stack.procs.append(proc)
    wait_until(lambda: "subscribed (mid" in proc.output(), what="runmqtt subscribed", proc=proc)
    try:
        yield stack
    finally:
        stack.stop()


def telemetry_worker(stack: Stack, name: str) -> Proc:
    proc = start_manage(name, ["runworker", "bridge-telemetry"], env=stack.env, log_dir=stack.tmp)
    stack.procs.append(proc)
    return proc


def send_readings(broker: Mosquitto, *, seed: int) -> dict[str, float]:
    """Each device streams PER_DEVICE readings (id -> value sent), over several windows."""
    rng = random.Random(seed)
    sent: dict[str, float] = {}
    devices = [TestDevice(broker.port, name, password) for name, password in DEVICES.items()]
    try:
        for i in range(PER_DEVICE):
            for device in devices:
                # Quarters: sums of them are exact in binary floating point.
                value = rng.randint(-400, 400) / 4
                key = f"{device.name}-{seed}-{i}"
                sent[key] = value
                body = {"id": key, "temperature": value, "env": {"hum": 50}, "tags": ["x"]}
                device.publish(f"devices/{device.name}/telemetry", json.dumps(body))
            time.sleep(STEP)  # paced, so that windows open and close while it streams
    finally:
        for device in devices:
            device.close()
    return sent


def stored(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM bridge_telemetry")[0][0])  # type: ignore[call-overload]


def pending(database_url: str) -> int:
    rows = query(database_url, "SELECT count(*) FROM bridge_telemetry WHERE NOT rolled_up")
    return int(rows[0][0])  # type: ignore[call-overload]


def _when(value: object) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def expected_rollups(database_url: str, sent: dict[str, float]) -> dict[tuple[str, str, datetime], tuple[int, float, float, float, float]]:
    """(device, period, window start) -> (count, min, max, sum, last) from what was sent."""
    rows = query(database_url, "SELECT d.device_id, t.client_key, t.received, t.id FROM bridge_telemetry t "
                 "JOIN bridge_device d ON d.id = t.device_id")
    readings = sorted((_when(received), pk, device, sent[key]) for device, key, received, pk in rows)
    windows: dict[tuple[str, str, datetime], list[float]] = {}
    for at, _, device, value in readings:
        for period, seconds in WINDOWS.items():
            start_ = datetime.fromtimestamp(int(at.timestamp() // seconds) * seconds, tz=UTC)
            windows.setdefault((device, period, start_), []).append(value)
    return {k: (len(v), min(v), max(v), sum(v), v[-1]) for k, v in windows.items()}


def actual_rollups(database_url: str, metric: str = "temperature") -> dict[tuple[str, str, datetime], tuple[int, float, float, float, float]]:
    rows = query(database_url, 'SELECT d.device_id, r.period, r.start, r."count", r."min", r."max", r."sum", r."last" '
                 "FROM bridge_telemetryrollup r JOIN bridge_device d ON d.id = r.device_id WHERE r.metric = ?", (metric,))
    return {(str(d), str(p), _when(s)): (int(c), float(mn), float(mx), float(sm), float(la))  # type: ignore[arg-type]
            for d, p, s, c, mn, mx, sm, la in rows}


def test_two_workers_roll_every_reading_into_each_window_exactly_once(
    stack: Stack, broker: Mosquitto, database_url: str
) -> None:
    telemetry_worker(stack, "telemetry-1")
    telemetry_worker(stack, "telemetry-2")
    sent = send_readings(broker, seed=1)
    wait_until(lambda: stored(database_url) == len(sent), what="every reading stored")
    wait_until(lambda: pending(database_url) == 0, what="every reading rolled up")

    expected = expected_rollups(database_url, sent)
    assert len({start_ for _, period, start_ in expected if period == "1m"}) >= 3  # windows closed meanwhile
    assert actual_rollups(database_url) == expected
    humidity = actual_rollups(database_url, "env.hum")
    assert sum(c for c, *_ in humidity.values()) == 2 * len(sent)  # one count per reading and window
    assert not actual_rollups(database_url, "tags.0")  # arrays are not metrics


def test_a_worker_killed_mid_rollup_leaves_nothing_half_written(
    stack: Stack, broker: Mosquitto, database_url: str
) -> None:
    sent = send_readings(broker, seed=2)
    wait_until(lambda: stored(database_url) == len(sent), what="every reading stored")
    marker = stack.tmp / "stalled"
    slow = start("slow-worker", [sys.executable, "-m", "tests.support.slow_rollup_worker"],
                 log_dir=stack.tmp, env={**stack.env, "ROLLUP_STALL_FILE": str(marker)})
    stack.procs.append(slow)
    wait_until(marker.exists, what="the worker inside its rollup transaction", proc=slow)
    slow.kill()

    assert pending(database_url) == len(sent)  # the killed batch was rolled back whole
    assert actual_rollups(database_url) == {}
    telemetry_worker(stack, "telemetry-after")
    wait_until(lambda: pending(database_url) == 0, what="every reading rolled up after the restart")
    assert actual_rollups(database_url) == expected_rollups(database_url, sent)
