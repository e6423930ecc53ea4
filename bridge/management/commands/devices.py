"""`devices add <device> --room <room> ... [--listen <room> ...] [--password P]` and `devices list`."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bridge.exceptions import BridgeError
from bridge.models import Device
from bridge.services.devices import device_register


class Command(BaseCommand):
    help = "Provision MQTT devices from scripts: the rooms each may post into and listen to."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Create a device, or add rooms to it.")
        add.add_argument("device")
        add.add_argument(
            "--room", action="append", default=[], help="a room it may post into (and listens to)"
        )
        add.add_argument(
            "--listen", action="append", default=[], help="a room it only listens to"
        )
        add.add_argument(
            "--password",
            default=None,
            help="its broker password, written to MQTT_PASSWD_FILE (mosquitto_passwd)",
        )
        sub.add_parser("list", help="List devices and their rooms.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self._list()
            return
        if options["password"] is not None:
            self._set_password(options["device"], options["password"])
        try:
            device = device_register(
                device_id=options["device"],
                post_rooms=options["room"],
                listen_rooms=[*options["room"], *options["listen"]],
            )
        except BridgeError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"device {device.device_id} ready")

    def _list(self) -> None:
        devices = Device.objects.prefetch_related("post_rooms", "listen_rooms").order_by("device_id")
        for device in devices:
            posts = ",".join(r.slug for r in device.post_rooms.all()) or "-"
            listens = ",".join(r.slug for r in device.listen_rooms.all()) or "-"
            state = device.status or "never seen"
            self.stdout.write(f"{device.device_id}\tposts: {posts}\tlistens: {listens}\t{state}")

    def _set_password(self, device: str, password: str) -> None:
        path = settings.MQTT_PASSWD_FILE
        if not path:
            raise CommandError(
                "--password needs MQTT_PASSWD_FILE: the broker's password file the bridge manages"
            )
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise CommandError("--password needs mosquitto_passwd (the mosquitto package)")
        args = [tool, "-b", path, device, password]
        if not _exists(path):
            args.insert(1, "-c")
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CommandError(f"mosquitto_passwd failed: {done.stderr.strip()}")
        self.stdout.write(f"broker password set in {path} (reload mosquitto: SIGHUP)")


def _exists(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except FileNotFoundError:
        return False
