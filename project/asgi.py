"""ASGI entry point: HTTP, WebSocket, the worker channels, and the MQTT and XMPP edges."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from project.routing import build_application  # noqa: E402

application = build_application(django_asgi_app)
