"""`devices add` / `devices list`: provisioning devices from scripts."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from bridge.models import Device
from bridge.services.rooms import room_create

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("devices", *args, stdout=out)
    return out.getvalue()


def test_add_and_list() -> None:
    room_create(slug="lobby")
    room_create(slug="garden")

    assert run("add", "thermo-1", "--room", "lobby", "--listen", "garden") == "device thermo-1 ready\n"
    run("add", "thermo-1", "--room", "lobby")  # idempotent

    device = Device.objects.get(device_id="thermo-1")
    assert list(device.post_rooms.values_list("slug", flat=True)) == ["lobby"]
    assert sorted(device.listen_rooms.values_list("slug", flat=True)) == ["garden", "lobby"]
    assert run("list") == "thermo-1\tposts: lobby\tlistens: garden,lobby\tno status yet\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["add", "bad id!", "--room", "lobby"], "not a device id"),
        (["add", "thermo-1", "--room", "nowhere"], "No room 'nowhere'"),
        (["add", "thermo-1", "--room", "lobby", "--password", "pw"], "MQTT_PASSWD_FILE"),
        (["add", "+", "--room", "lobby", "--password", "pw"], "not a device id"),
        (["add", "a/b", "--password", "pw"], "not a device id"),
        (["add", "bridge-1", "--password", "pw"], "reserved"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], error: str) -> None:
    room_create(slug="lobby")
    with pytest.raises(CommandError, match=error):
        run(*args)


def test_a_bad_id_writes_nothing_anywhere(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    with override_settings(MQTT_PASSWD_FILE=str(passwd)), pytest.raises(CommandError):
        run("add", "#", "--password", "pw")
    assert not passwd.exists() and not Device.objects.exists()


def test_password_goes_to_the_brokers_password_file(tmp_path: Path) -> None:
    room_create(slug="lobby")
    passwd = tmp_path / "passwd"
    with override_settings(MQTT_PASSWD_FILE=str(passwd)):
        run("add", "thermo-1", "--room", "lobby", "--password", "s3cret")
        run("add", "thermo-2", "--room", "lobby", "--password", "other")
    users = [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]
    assert users == ["thermo-1", "thermo-2"]
    assert "s3cret" not in passwd.read_text()


def test_acl_lets_each_device_read_only_its_listen_rooms() -> None:
    room_create(slug="lobby")
    room_create(slug="garden")
    run("add", "thermo-1", "--room", "lobby", "--listen", "garden")
    run("add", "pump-7", "--room", "garden")

    acl = run("acl")

    assert "user bridge\ntopic read devices/#\ntopic write rooms/#\n" in acl
    assert "user pump-7\ntopic read rooms/garden/messages\n\n" in acl
    assert "user thermo-1\ntopic read rooms/garden/messages\ntopic read rooms/lobby/messages\n" in acl
    assert acl.endswith("pattern read devices/%u/errors\n")
    assert "pattern read rooms" not in acl
