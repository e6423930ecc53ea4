"""`demo`: the quick start's room and user, created once."""

from __future__ import annotations

import argparse
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from bridge.models import AlertRule
from bridge.services.alerts import alert_rule_create
from bridge.services.rooms import room_create

DEMO_RULE = "lobby too hot"


class Command(BaseCommand):
    help = "Create the demo room 'lobby' and the demo user (development only)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")

    def handle(self, *args: Any, **options: Any) -> None:
        lobby = room_create(slug="lobby", title="Lobby")
        if not AlertRule.objects.filter(name=DEMO_RULE).exists():
            # What `simulate_devices` makes fire and clear within a minute.
            alert_rule_create(name=DEMO_RULE, room=lobby, notify=[lobby], metric="temperature",
                              condition="above", threshold=30.0, hysteresis=1.0)
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
        self.stdout.write(f"room 'lobby' ready, with the alert rule {DEMO_RULE!r}")
