"""`devices add <device> --room <room> ... [--listen <room> ...] [--password P]`, `devices list`,
and `devices acl`: a static mosquitto ACL (brokers without dynamic security).

The broker-specific work is the MQTT edge's (protocols/mqtt/credentials.py)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bridge.exceptions import BridgeError
from bridge.models import Device
from bridge.services.devices import device_register, device_remove, device_set_enabled
from protocols.mqtt.credentials import device_password_set, devices_acl


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
            help="its broker password: set through the broker's dynamic security (MQTT_DYNSEC=1) "
            "or written to MQTT_PASSWD_FILE (mosquitto_passwd)",
        )
        sub.add_parser("list", help="List devices and their rooms.")
        for action, text in (("enable", "Enable a device."),
                             ("disable", "Disable a device: refused at once, its connection cut."),
                             ("remove", "Delete a device, its telemetry and its broker client.")):
            sub.add_parser(action, help=text).add_argument("device")
        acl = sub.add_parser("acl", help="Print a mosquitto ACL from the devices' rooms.")
        acl.add_argument("--bridge-user", default="bridge", help="the bridge's own broker account")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self._list()
            return
        if options["action"] in ("enable", "disable", "remove"):
            self._state(options["action"], options["device"])
            return
        if options["action"] == "acl":
            self.stdout.write(devices_acl(bridge_user=options["bridge_user"]), ending="")
            return
        try:
            # Validated and stored first: a bad id never reaches the broker.
            device = device_register(
                device_id=options["device"],
                post_rooms=options["room"],
                listen_rooms=[*options["room"], *options["listen"]],
            )
            if options["password"] is not None:
                self.stdout.write(device_password_set(device=device, password=options["password"]))
        except BridgeError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"device {device.device_id} ready")

    def _state(self, action: str, device_id: str) -> None:
        try:
            if action == "remove":
                device_remove(device_id=device_id)
            else:
                device_set_enabled(device_id=device_id, enabled=action == "enable")
        except BridgeError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"device {device_id} {action}d")

    def _list(self) -> None:
        devices = Device.objects.prefetch_related("post_rooms", "listen_rooms").order_by("device_id")
        for device in devices:
            posts = ",".join(r.slug for r in device.post_rooms.all()) or "-"
            listens = ",".join(r.slug for r in device.listen_rooms.all()) or "-"
            state = (device.status or "no status yet") + ("" if device.enabled else ", disabled")
            self.stdout.write(f"{device.device_id}\tposts: {posts}\tlistens: {listens}\t{state}")
