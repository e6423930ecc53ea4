"""`healthcheck`: ask a process's health endpoint; exit 0 when it answers 200, else 1.

For container healthchecks: `python manage.py healthcheck --port 9101` asks the
ops endpoint of runmqtt/runxmpp/runworker (`/readyz` on OPS_HOST), and
`--url http://127.0.0.1:8000/readyz` asks a web process.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Ask a bridge process's /readyz (or --path); exit 0 when it answers 200, else 1."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=None, help="the ops port (default OPS_PORT)")
        parser.add_argument("--host", default=None, help="default OPS_HOST")
        parser.add_argument("--path", default="/readyz", help="/readyz (default) or /healthz")
        parser.add_argument("--url", default=None, help="a full URL instead (a web process)")
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"]
        if url is None:
            port = options["port"] or settings.OPS_PORT
            if not port:
                raise CommandError("give --port (or set OPS_PORT), or --url")
            url = f"http://{options['host'] or settings.OPS_HOST}:{port}{options['path']}"
        try:
            with urllib.request.urlopen(url, timeout=options["timeout"]) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (OSError, ValueError) as exc:
            self.stderr.write(f"{url}: {exc}")
            sys.exit(1)
        self.stdout.write(f"{status} {body.decode('utf-8', 'replace')}")
        if status != 200:
            sys.exit(1)
