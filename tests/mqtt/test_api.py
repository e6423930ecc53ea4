"""`POST /api/devices/<device>/commands`."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from bridge.models import ApiToken, Device, DeviceCommand
from bridge.selectors import room_get
from bridge.services.devices import device_commands_claim, device_register
from bridge.services.members import MemberRef, member_add
from bridge.services.rooms import room_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def token() -> str:
    user = get_user_model().objects.create_user(username="ops", password="pw")
    room_create(slug="lobby")
    device_register(device_id="pump-7", post_rooms=["lobby"])
    # The tie that lets ops command pump-7: a member of a room the device is in.
    member_add(room=room_get(slug="lobby"), member=MemberRef(username="ops"))
    return ApiToken.objects.create(user=user).key


def post(client: Client, device: str, body: object, token: str | None) -> tuple[int, dict]:
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if token else {}
    response = client.post(
        f"/api/devices/{device}/commands", json.dumps(body), content_type="application/json", **headers
    )
    return response.status_code, response.json()


def test_a_command_is_recorded_and_claimed_once(client: Client, token: str) -> None:
    status, body = post(client, "pump-7", {"text": "start"}, token)

    assert status == 202
    assert body["command"]["device"] == "pump-7"
    first = device_commands_claim()
    assert [c.payload["text"] for c in first] == ["start"]
    assert first[0].payload["sender"] == {"kind": "user", "name": "ops"}
    assert device_commands_claim() == []
    assert DeviceCommand.objects.get().published_at is not None


@pytest.mark.parametrize(
    ("device", "body", "auth", "status", "code"),
    [
        ("pump-7", {"text": "start"}, False, 401, "auth_required"),
        ("nobody", {"text": "start"}, True, 404, "unknown_device"),
        ("pump-7", {"text": "  "}, True, 400, "empty_command"),
        ("pump-7", ["start"], True, 400, "invalid_json"),
        ("bad id!", {"text": "start"}, True, 400, "invalid_device"),
    ],
)
def test_bad_commands_are_refused(
    client: Client, token: str, device: str, body: object, auth: bool, status: int, code: str
) -> None:
    got_status, got = post(client, device, body, token if auth else None)
    assert (got_status, got["error"]["code"]) == (status, code)
    assert DeviceCommand.objects.count() == 0


def test_a_user_without_a_tie_to_the_device_is_refused(client: Client, token: str) -> None:
    stranger = get_user_model().objects.create_user(username="stranger", password="pw")
    other = ApiToken.objects.create(user=stranger).key
    status, body = post(client, "pump-7", {"text": "start"}, other)
    assert (status, body["error"]["code"]) == (403, "forbidden_device")
    assert DeviceCommand.objects.count() == 0
    # An operator of the device needs no room.
    Device.objects.get(device_id="pump-7").operators.add(stranger)
    assert post(client, "pump-7", {"text": "start"}, other)[0] == 202
