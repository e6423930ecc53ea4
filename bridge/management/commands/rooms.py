"""`rooms add <room> [--title T] [--private]`, `rooms list`, and
`rooms members add|remove|list <room> ...`: who belongs to a private room."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bridge.access import members_list
from bridge.exceptions import BridgeError
from bridge.models import Room, RoomMember
from bridge.selectors import room_get
from bridge.services.members import MemberRef, member_add, member_remove
from bridge.services.rooms import room_create


def _member_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a Django user, by username")
    who.add_argument("--group", help="a Django group: every user in it")
    who.add_argument("--jid", help="an XMPP address (user@domain)")
    who.add_argument("--device", help="an MQTT device: it listens to (and posts into) the room")


class Command(BaseCommand):
    help = "Provision rooms and their members from scripts."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Create a room (or update its title/privacy).")
        add.add_argument("room")
        add.add_argument("--title", default="")
        privacy = add.add_mutually_exclusive_group()
        privacy.add_argument("--private", dest="private", action="store_true", default=None,
                             help="only its members read and post (see `rooms members`)")
        privacy.add_argument("--public", dest="private", action="store_false",
                             help="make an existing private room public")
        sub.add_parser("list", help="List rooms.")
        members = sub.add_parser("members", help="Who belongs to a private room.")
        msub = members.add_subparsers(dest="members_action", required=True)
        madd = msub.add_parser("add", help="Add a member (or change its role).")
        _member_arguments(madd)
        madd.add_argument("--member-jid", default="",
                          help="with --user: that user's XMPP address")
        madd.add_argument("--role", choices=RoomMember.Role.values, default=RoomMember.Role.MEMBER,
                          help="admins manage the room's members over the API")
        madd.add_argument("--listen-only", action="store_true",
                          help="with --device: it listens to the room but does not post")
        mremove = msub.add_parser("remove", help="Remove a member.")
        _member_arguments(mremove)
        mlist = msub.add_parser("list", help="List a room's members.")
        mlist.add_argument("room")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "add":
                room = room_create(
                    slug=options["room"], title=options["title"], private=options["private"]
                )
                self.stdout.write(f"room {room.slug} ready")
            elif options["action"] == "members":
                self._members(options)
            else:
                self._list()
        except BridgeError as exc:
            raise CommandError(exc.detail) from exc

    def _list(self) -> None:
        for room in Room.objects.order_by("slug"):
            flags = " private" if room.private else ""
            self.stdout.write(
                f"{room.slug}\t{room.display_title}\t{room.message_count} messages{flags}"
            )

    def _members(self, options: dict[str, Any]) -> None:
        room = room_get(slug=options["room"])
        action = options["members_action"]
        if action == "list":
            for info in members_list(room=room):
                extra = info.jid or info.access
                self.stdout.write(
                    f"{info.kind}\t{info.name}\t{info.role}" + (f"\t{extra}" if extra else "")
                )
            if not room.private:
                self.stderr.write(f"(room {room.slug} is public: everyone reads it)")
            return
        member = MemberRef(
            username=options["user"], group=options["group"],
            jid=options["jid"], device=options["device"],
        )
        if action == "add":
            label = member_add(
                room=room, member=member, role=options["role"],
                jid=options["member_jid"],
                device_posts=not options["listen_only"],
            )
            self.stdout.write(f"{label} is a member of {room.slug}")
        elif member_remove(room=room, member=member):
            self.stdout.write(f"removed from {room.slug}")
        else:
            raise CommandError(f"not a member of {room.slug}")
