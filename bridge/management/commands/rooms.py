"""`rooms add <room> [--title T] [--private]` and `rooms list`."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bridge.exceptions import BridgeError
from bridge.models import Room
from bridge.services.rooms import room_create


class Command(BaseCommand):
    help = "Provision rooms from scripts."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Create a room (or update its title/privacy).")
        add.add_argument("room")
        add.add_argument("--title", default="")
        privacy = add.add_mutually_exclusive_group()
        privacy.add_argument("--private", dest="private", action="store_true", default=None,
                             help="only signed-in users see it (not bridged to XMPP)")
        privacy.add_argument("--public", dest="private", action="store_false",
                             help="make an existing private room public")
        sub.add_parser("list", help="List rooms.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "add":
            try:
                room = room_create(
                    slug=options["room"], title=options["title"], private=options["private"]
                )
            except BridgeError as exc:
                raise CommandError(exc.detail) from exc
            self.stdout.write(f"room {room.slug} ready")
            return
        for room in Room.objects.order_by("slug"):
            flags = " private" if room.private else ""
            self.stdout.write(
                f"{room.slug}\t{room.display_title}\t{room.message_count} messages{flags}"
            )
