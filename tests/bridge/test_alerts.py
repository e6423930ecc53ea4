"""Alert rules: one message when firing starts, one when it clears, no flapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from bridge.models import AlertRule, AlertState, Device, Message, Telemetry
from bridge.services.alerts import alerts_check_silence
from bridge.services.devices import device_register
from bridge.services.rooms import room_create
from bridge.services.telemetry import telemetry_roll_up

pytestmark = pytest.mark.django_db


def _setup(**rule: object) -> tuple[Device, AlertRule]:
    lobby = room_create(slug="lobby")
    device = device_register(device_id="thermo-1", post_rooms=["lobby"])
    created = AlertRule.objects.create(name="hot", room=lobby, **rule)
    created.notify_rooms.add(lobby)
    return device, created


def _feed(device: Device, values: list[float], *, start: datetime, step: float = 1.0) -> None:
    for i, value in enumerate(values):
        at = start + timedelta(seconds=i * step)
        Telemetry.objects.create(device=device, data={"temp": value}, metrics={"temp": value}, received=at)
    telemetry_roll_up()


def _alerts() -> list[str]:
    return [m.data["alert"]["state"] for m in Message.objects.filter(origin="system").order_by("seq")]


def test_a_value_hovering_at_the_line_fires_once_and_clears_once() -> None:
    device, _ = _setup(metric="temp", condition="above", threshold=30, hysteresis=1)
    start = datetime(2026, 11, 22, 10, tzinfo=UTC)
    _feed(device, [29, 31, 30.5, 29.5, 30.2, 31, 29.5], start=start)
    assert _alerts() == ["firing"]
    _feed(device, [28.5, 29, 29.9, 29.5], start=start + timedelta(seconds=10))
    assert _alerts() == ["firing", "cleared"]
    message = Message.objects.filter(origin="system").first()
    assert message is not None and message.sender.kind == "system"
    assert message.data["alert"]["device"] == "thermo-1" and message.data["alert"]["value"] == 31


def test_hold_time_ignores_a_short_spike() -> None:
    device, _ = _setup(metric="temp", condition="above", threshold=30, hold_seconds=3)
    start = datetime(2026, 11, 22, 10, tzinfo=UTC)
    _feed(device, [29, 35, 29, 29], start=start)  # one second over: not held
    assert _alerts() == []
    _feed(device, [31, 32, 33, 34, 35], start=start + timedelta(seconds=10))
    assert _alerts() == ["firing"]


def test_outside_a_range_and_below() -> None:
    device, _ = _setup(metric="temp", condition="outside", low=10, high=20, hysteresis=0.5)
    _feed(device, [15, 21, 19.8, 19.4, 9], start=datetime(2026, 11, 22, 10, tzinfo=UTC))
    assert _alerts() == ["firing", "cleared", "firing"]


def test_an_offline_or_silent_device_raises_its_alert_and_clears_when_back() -> None:
    device, rule = _setup(condition="silent", silent_seconds=30)
    now = timezone.now()
    _feed(device, [20], start=now - timedelta(seconds=5))
    assert alerts_check_silence(now=now) == [] and _alerts() == []
    Device.objects.filter(pk=device.pk).update(status="offline")  # its Last Will
    assert [e["data"]["alert"]["reason"] for e in alerts_check_silence(now=now)] == ["offline"]
    assert alerts_check_silence(now=now + timedelta(seconds=1)) == []  # once, not per sweep
    Device.objects.filter(pk=device.pk).update(status="online")
    assert [e["data"]["alert"]["state"] for e in alerts_check_silence(now=now)] == ["cleared"]
    later = now + timedelta(seconds=60)  # online, but nothing for 60 s
    assert [e["data"]["alert"]["reason"] for e in alerts_check_silence(now=later)] == ["silent"]
    assert AlertState.objects.get(rule=rule, device=device).state == "firing"
