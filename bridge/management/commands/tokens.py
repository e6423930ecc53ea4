"""`tokens add <username> [--name N]`: an API token for scripts."""

from __future__ import annotations

import argparse
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from bridge.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user (Authorization: Token <key>)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add")
        add.add_argument("username")
        add.add_argument("--name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: options["username"]})
        except User.DoesNotExist as exc:
            raise CommandError(f"no user {options['username']!r}") from exc
        token = ApiToken.objects.create(user=user, name=options["name"])
        self.stdout.write(token.key)
