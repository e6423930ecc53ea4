"""The simulator's readings and runbridge's run file (no broker needed)."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

from django.test import override_settings

from bridge.metrics import flatten
from bridge.runfile import run_file_entry, run_file_read
from protocols.mqtt.simulator import Broker, Readings, SimulatedDevice


def test_readings_drift_and_an_excursion_crosses_the_demo_rule_and_comes_back() -> None:
    readings = Readings(random.Random(7))
    calm = [readings.next()["temperature"] for _ in range(60)]
    assert all(15 < t < 29 for t in calm)  # type: ignore[operator]
    assert len(set(calm)) > 30  # noise: it moves
    readings.excursion(True)
    hot = [readings.next()["temperature"] for _ in range(12)]
    assert max(hot) > 31  # type: ignore[type-var]
    readings.excursion(False)
    after = [readings.next()["temperature"] for _ in range(30)]
    assert after[-1] < 29  # type: ignore[operator]
    metrics = flatten(readings.next())
    assert set(metrics) == {"temperature", "humidity", "env.battery"}


def test_the_run_file_says_where_runbridge_serves_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "var" / "runbridge.json"
    with override_settings(BRIDGE_RUN_FILE=str(path)):
        assert run_file_read() == {}
        with run_file_entry("mqtt", {"host": "127.0.0.1", "port": 1983}):
            assert run_file_read()["mqtt"] == {"host": "127.0.0.1", "port": 1983}
        assert not path.exists()
        path.write_text(json.dumps({"pid": 2**22 + os.getpid(), "mqtt": {"host": "x", "port": 1}}))
        assert run_file_read() == {}  # its process is gone: stale


async def test_a_device_that_stops_answering_commands_says_so() -> None:
    said: list[str] = []
    device = SimulatedDevice(name="thermo-1", broker=Broker(host="127.0.0.1", port=1), room="lobby",
                             seed=1, say=said.append)

    async def broken() -> None:
        raise ConnectionError("the broker went away")

    async def calm() -> None:
        await asyncio.sleep(3600)

    failed = asyncio.create_task(broken())
    failed.add_done_callback(device._answers_ended)
    stopped = asyncio.create_task(calm())
    stopped.add_done_callback(device._answers_ended)
    await asyncio.gather(failed, return_exceptions=True)
    stopped.cancel()
    await asyncio.gather(stopped, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert said == ["thermo-1 no longer answers commands: ConnectionError('the broker went away')"]


async def test_simulate_devices_says_when_an_extra_task_fails() -> None:
    from io import StringIO

    from protocols.mqtt.management.commands.simulate_devices import Command

    out = StringIO()
    command = Command(stdout=out)

    async def broken() -> None:
        raise ValueError("no devices to heat")

    task = asyncio.create_task(broken(), name="excursions")
    task.add_done_callback(command._extra_ended)
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert "excursions failed: ValueError('no devices to heat')" in out.getvalue()
