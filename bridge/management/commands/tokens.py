"""`tokens add <username> [--name N]`, `tokens list [--user U]`, `tokens revoke <id or prefix>`."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bridge.exceptions import BridgeError
from bridge.models import ApiToken
from bridge.services.tokens import token_create, token_find, token_revoke


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


class Command(BaseCommand):
    help = "API tokens (Authorization: Token <key>): create, list, revoke."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Create a token and print its key (shown only now).")
        add.add_argument("username")
        add.add_argument("--name", default="")
        listing = sub.add_parser("list", help="List tokens (id, user, name, key prefix, use).")
        listing.add_argument("--user", default=None, help="only this user's tokens")
        revoke = sub.add_parser("revoke", help="Revoke a token: it fails at once.")
        revoke.add_argument("token", help="its id or key prefix, as `tokens list` shows")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "add":
                _, key = token_create(username=options["username"], name=options["name"])
                self.stdout.write(key)
            elif options["action"] == "revoke":
                token = token_revoke(token=token_find(ref=options["token"]))
                self.stdout.write(f"token {token.pk} ({token.prefix}...) of {token.user} revoked")
            else:
                self._list(options["user"])
        except BridgeError as exc:
            raise CommandError(exc.detail) from exc

    def _list(self, username: str | None) -> None:
        tokens = ApiToken.objects.select_related("user").order_by("pk")
        if username:
            tokens = tokens.filter(user__username=username)
        self.stdout.write("id\tuser\tname\tkey\tcreated\tlast used\tstate")
        for t in tokens:
            state = f"revoked {_when(t.revoked)}" if t.revoked else "active"
            self.stdout.write(
                f"{t.pk}\t{t.user}\t{t.name or '-'}\t{t.prefix}...\t{_when(t.created)}\t"
                f"{_when(t.last_used)}\t{state}"
            )
