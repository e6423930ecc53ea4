"""Devices in the admin: which rooms each may post into and listens to."""

from __future__ import annotations

import pytest
from django.test import Client

from bridge.models import AlertRule, Device, Room

pytestmark = pytest.mark.django_db


def test_a_device_added_in_the_admin_speaks_as_a_device_identity(admin_client: Client) -> None:
    lobby = Room.objects.create(slug="lobby")
    assert admin_client.get("/admin/bridge/device/add/").status_code == 200

    response = admin_client.post(
        "/admin/bridge/device/add/",
        {"device_id": "thermo-1", "post_rooms": [lobby.pk], "listen_rooms": [lobby.pk], "enabled": "on"},
    )

    assert response.status_code == 302, response.content[:2000]
    device = Device.objects.get(device_id="thermo-1")
    assert (device.identity.kind, device.identity.name) == ("device", "thermo-1")
    assert list(device.post_rooms.values_list("slug", flat=True)) == ["lobby"]
    for page in ("/admin/bridge/device/", "/admin/bridge/telemetry/", "/admin/bridge/devicecommand/"):
        assert admin_client.get(page).status_code == 200


def test_an_alert_rule_is_made_in_the_admin_and_checked(admin_client: Client) -> None:
    lobby = Room.objects.create(slug="lobby")
    form = {"name": "hot", "room": lobby.pk, "metric": "temperature", "condition": "above",
            "threshold": "30", "hysteresis": "1", "hold_seconds": "0", "notify_rooms": [lobby.pk],
            "enabled": "on"}
    refused = admin_client.post("/admin/bridge/alertrule/add/", {**form, "threshold": ""})
    assert refused.status_code == 200 and b"need a threshold" in refused.content
    assert admin_client.post("/admin/bridge/alertrule/add/", form).status_code == 302
    rule = AlertRule.objects.get()
    assert (rule.condition, rule.threshold, list(rule.notify_rooms.all())) == ("above", 30, [lobby])
    for page in ("/admin/bridge/alertrule/", "/admin/bridge/alertstate/",
                 "/admin/bridge/telemetryrollup/", "/admin/bridge/devicemetric/"):
        assert admin_client.get(page).status_code == 200
