"""The handshake's Origin check, as Channels' AllowedHostsOriginValidator, with a log line."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings

logger = logging.getLogger(__name__)


class LoggedOriginValidator(OriginValidator):
    """A refused handshake says why in the log (the browser only sees a 403)."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        valid: bool = super().valid_origin(parsed_origin)
        if not valid:
            origin = parsed_origin.geturl() if parsed_origin is not None else "(no Origin header)"
            logger.warning(
                "refused a WebSocket handshake from Origin %s: its host is not in ALLOWED_HOSTS %s",
                origin, self.allowed_origins,
            )
        return valid


def allowed_hosts_origin_validator(application: Any) -> LoggedOriginValidator:
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return LoggedOriginValidator(application, allowed_hosts)
