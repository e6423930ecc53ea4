"""`demo`: the quick start's room and user, created once."""

from __future__ import annotations

import argparse
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from bridge.services.rooms import room_create


class Command(BaseCommand):
    help = "Create the demo room 'lobby' and the demo user (development only)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")

    def handle(self, *args: Any, **options: Any) -> None:
        room_create(slug="lobby", title="Lobby")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=options["username"])
        if created:
            user.set_password(options["password"])
            user.is_staff = True
            user.is_superuser = True
            user.save()
            self.stdout.write(
                f"demo user {options['username']!r} / password {options['password']!r} (admin too)"
            )
        else:
            self.stdout.write(f"demo user {options['username']!r} already exists")
        self.stdout.write("room 'lobby' ready")
