"""The devices' HTTP API: a room's devices, a device's rollups, alert rules; contract errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from bridge.models import AlertRule, Device, Room, Telemetry
from bridge.services.devices import device_register, device_status_set
from bridge.services.rooms import room_create
from bridge.services.telemetry import telemetry_roll_up

pytestmark = pytest.mark.django_db


@pytest.fixture
def lobby() -> Room:
    room = room_create(slug="lobby", title="Lobby")
    room_create(slug="vault", private=True)
    return room


@pytest.fixture
def thermo(lobby: Room) -> Device:
    device = device_register(device_id="thermo-1", post_rooms=["lobby"])
    device_register(device_id="safe-1", post_rooms=["vault"])
    device_status_set(device=device, status="online")
    now = timezone.now()
    for i, value in enumerate([20.0, 22.0, 24.0]):
        Telemetry.objects.create(
            device=device, received=now - timedelta(seconds=3 - i),
            data={"temperature": value, "units": {"temperature": "°C"}},
            metrics={"temperature": value},
        )
    telemetry_roll_up()
    return device


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    return str(response.json()["error"]["code"])


def test_a_rooms_devices_with_status_last_readings_and_units(client: Client, thermo: Device) -> None:
    body = client.get("/api/rooms/lobby/devices").json()
    assert [d["device"] for d in body["devices"]] == ["thermo-1"]
    device = body["devices"][0]
    assert device["status"] == "online" and device["alerts"] == []
    assert device["readings"]["temperature"]["value"] == 24.0
    assert device["readings"]["temperature"]["unit"] == "°C"
    assert _error(client.get("/api/rooms/vault/devices"), 404) == "room_not_found"
    assert _error(client.get("/api/rooms/nowhere/devices"), 404) == "room_not_found"


def test_a_devices_rollups_as_json(client: Client, thermo: Device) -> None:
    body = client.get("/api/devices/thermo-1/telemetry?metric=temperature&window=1m").json()
    assert body["window"] == "1m" and body["seconds"] == 60
    total = sum(r["count"] for r in body["rollups"])
    assert total == 3
    assert min(r["min"] for r in body["rollups"]) == 20.0
    assert max(r["max"] for r in body["rollups"]) == 24.0
    hourly = client.get("/api/devices/thermo-1/telemetry?metric=temperature&window=1h").json()
    assert sum(r["count"] for r in hourly["rollups"]) == 3
    future = (timezone.now() + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    later = client.get("/api/devices/thermo-1/telemetry", {"metric": "temperature", "since": future})
    assert later.json()["rollups"] == []


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/api/devices/thermo-1/telemetry?metric=temperature&window=5m", 400, "invalid_window"),
        ("/api/devices/thermo-1/telemetry?window=1m", 400, "invalid_metric"),
        ("/api/devices/thermo-1/telemetry?metric=temperature&since=yesterday", 400, "invalid_since"),
        ("/api/devices/nobody/telemetry?metric=temperature", 404, "unknown_device"),
        ("/api/devices/safe-1/telemetry?metric=temperature", 404, "unknown_device"),  # private room
        ("/api/devices/bad%20id/telemetry?metric=temperature", 400, "invalid_device"),
    ],
)
def test_telemetry_errors_follow_the_contract(
    client: Client, thermo: Device, url: str, status: int, code: str
) -> None:
    assert _error(client.get(url), status) == code


def test_alert_rules_through_the_api(client: Client, lobby: Room) -> None:
    User = get_user_model()
    User.objects.create_superuser(username="boss", password="pw")
    User.objects.create_user(username="guest", password="pw")
    rule = {"name": "hot", "room": "lobby", "metric": "temperature", "condition": "above",
            "threshold": 30, "hysteresis": 1, "notify": ["lobby"]}
    assert _error(client.post("/api/alerts/rules", rule, content_type="application/json"), 401) == "auth_required"
    client.login(username="guest", password="pw")
    assert _error(client.post("/api/alerts/rules", rule, content_type="application/json"), 403) == "forbidden"
    client.login(username="boss", password="pw")
    bad = {**rule, "threshold": None}
    assert _error(client.post("/api/alerts/rules", bad, content_type="application/json"), 400) == "invalid_rule"
    both = {**rule, "device": "thermo-1"}
    device_register(device_id="thermo-1", post_rooms=["lobby"])
    assert _error(client.post("/api/alerts/rules", both, content_type="application/json"), 400) == "invalid_rule"
    created = client.post("/api/alerts/rules", rule, content_type="application/json")
    assert created.status_code == 201
    rule_id = created.json()["rule"]["id"]
    assert created.json()["rule"]["notify"] == ["lobby"] and created.json()["rule"]["threshold"] == 30
    assert [r["name"] for r in client.get("/api/alerts/rules").json()["rules"]] == ["hot"]
    assert client.delete(f"/api/alerts/rules/{rule_id}").status_code == 204
    assert not AlertRule.objects.exists()
    assert _error(client.get(f"/api/alerts/rules/{rule_id}"), 404) == "unknown_rule"
