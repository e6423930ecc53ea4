"""Telemetry rollups, last readings, retention and the metric rule, on the test database."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from bridge.exceptions import InvalidInput
from bridge.metrics import flatten, units_of
from bridge.models import Device, DeviceMetric, Task, Telemetry, TelemetryRollup
from bridge.services.devices import device_register, telemetry_store, telemetry_store_many
from bridge.services.rooms import room_create
from bridge.services.telemetry import telemetry_prune, telemetry_roll_up, window_start


def test_nested_objects_are_flattened_and_non_numbers_ignored() -> None:
    reading = {
        "id": "r1", "units": {"env.temp": "°C"}, "env": {"temp": 21.5, "hum": 40, "ok": True},
        "name": "greenhouse", "list": [1, 2, 3], "nan": float("nan"), "n": None, "v": -3,
    }
    assert flatten(reading) == {"env.temp": 21.5, "env.hum": 40.0, "v": -3.0}
    assert units_of(reading, flatten(reading)) == {"env.temp": "°C"}


@pytest.mark.parametrize(
    ("reading", "code"),
    [
        ([1, 2], "invalid_telemetry"),
        ({"state": "on"}, "invalid_telemetry"),
        ({"t": 10**16}, "invalid_telemetry"),
        ({"a" * 201: 1}, "invalid_telemetry"),
        ({"m": {"m": {"m": {"m": {"m": {"m": {"m": {"m": {"m": 1}}}}}}}}}, "too_deep"),
        ({f"m{i}": i for i in range(201)}, "too_large"),
    ],
)
def test_malformed_readings_are_refused_with_a_code(reading: object, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        flatten(reading)
    assert caught.value.code == code


def test_windows_are_aligned_on_the_epoch() -> None:
    at = datetime(2026, 11, 22, 10, 17, 42, 500000, tzinfo=UTC)
    assert window_start(at, 60) == datetime(2026, 11, 22, 10, 17, tzinfo=UTC)
    assert window_start(at, 3600) == datetime(2026, 11, 22, 10, tzinfo=UTC)


def _device() -> Device:
    room_create(slug="lobby")
    return device_register(device_id="thermo-1", post_rooms=["lobby"])


def _reading(device: Device, at: datetime, **metrics: float) -> Telemetry:
    return Telemetry.objects.create(device=device, data=metrics, metrics=metrics, received=at)


@pytest.mark.django_db
@override_settings(TELEMETRY_WINDOW_SHORT=60, TELEMETRY_WINDOW_LONG=3600)
def test_rollups_are_exact_and_each_reading_counts_once() -> None:
    device = _device()
    base = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    values = [(base + timedelta(seconds=s), v) for s, v in
              [(5, 20.0), (30, 22.5), (59, 19.5), (61, 30.0), (119, 10.0), (3700, 7.0)]]
    for at, value in values:
        _reading(device, at, temp=value)
    assert telemetry_roll_up(limit=4).readings == 4  # two batches: a window spans both
    assert telemetry_roll_up().readings == 2
    assert telemetry_roll_up().readings == 0  # nothing is rolled up twice

    def expect(seconds: int) -> dict[datetime, tuple[int, float, float, float, float]]:
        windows: dict[datetime, list[float]] = {}
        for at, value in values:
            windows.setdefault(window_start(at, seconds), []).append(value)
        return {s: (len(v), min(v), max(v), sum(v), v[-1]) for s, v in windows.items()}

    for period, seconds in (("1m", 60), ("1h", 3600)):
        rows = TelemetryRollup.objects.filter(device=device, metric="temp", period=period)
        got = {r.start: (r.count, r.min, r.max, r.sum, r.last) for r in rows}
        assert got == expect(seconds)
    latest = DeviceMetric.objects.get(device=device, metric="temp")
    assert (latest.value, latest.at) == (7.0, values[-1][0])


@pytest.mark.django_db
def test_a_stored_reading_carries_its_metrics_and_a_bad_one_stores_nothing() -> None:
    device = _device()
    row, created = telemetry_store(device=device, data={"env": {"temp": 21.5}, "fw": "1.2"})
    assert created and row.metrics == {"env.temp": 21.5} and not row.rolled_up
    with pytest.raises(InvalidInput):
        telemetry_store(device=device, data={"fw": "1.2"})
    assert Telemetry.objects.count() == 1


@pytest.mark.django_db
@override_settings(TELEMETRY_KEEP_RAW_HOURS=1, TELEMETRY_KEEP_SHORT_HOURS=2,
                   TELEMETRY_KEEP_LONG_HOURS=0, BRIDGE_TASK_KEEP_HOURS=1)
def test_retention_keeps_what_is_not_rolled_up_yet() -> None:
    device = _device()
    now = timezone.now()
    old = now - timedelta(hours=3)
    _reading(device, old, temp=1.0)
    telemetry_roll_up()
    _reading(device, old, temp=2.0)  # old but still pending: kept
    Task.objects.create(name="x", key="x", state=Task.State.DONE, due_at=old, finished_at=old)
    deleted = telemetry_prune(now=now)
    assert deleted == {"raw": 1, "1m": 1, "tasks": 1}
    assert list(Telemetry.objects.values_list("rolled_up", flat=True)) == [False]
    assert TelemetryRollup.objects.filter(period="1h").count() == 1  # 0 keeps them
    assert not math.isnan(TelemetryRollup.objects.get(period="1h").sum)


@pytest.mark.django_db
def test_a_batch_of_readings_stores_each_id_once_and_refuses_the_bad_ones() -> None:
    device = _device()
    telemetry_store(device=device, data={"id": "a", "t": 1})
    results = telemetry_store_many(readings=[
        (device, {"id": "a", "t": 1}),      # stored before
        (device, {"id": "b", "t": 2}),
        (device, {"t": "warm"}),            # no number
        (device, {"id": "b", "t": 2}),      # twice in the batch
        (device, {"t": 3}),
    ])
    assert [r if isinstance(r, bool) else r.code for r in results] == [
        False, True, "invalid_telemetry", False, True
    ]
    assert sorted(Telemetry.objects.values_list("metrics", flat=True), key=str) == [
        {"t": 1.0}, {"t": 2.0}, {"t": 3.0}
    ]
