"""The handshake's Origin check: scheme, host and port, against the allowed origins.

Channels' AllowedHostsOriginValidator compares the Origin's host alone, so
`http://127.0.0.1:4444` or `https://localhost` passed for a server on
`http://127.0.0.1:9120`. Here an Origin is allowed when it is, exactly, one
of WEBSOCKET_ALLOWED_ORIGINS, or, when that setting is empty, the site's own
origin: the handshake's scheme (ws: http, wss: https) and its Host header,
whose host must be in ALLOWED_HOSTS. Refusals are a 403 and a log line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Origin | None:
        """scheme://host[:port] (what browsers send), or None when it is not one."""
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            return None
        return cls(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme])

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class OriginPolicy:
    """Read once from settings (`from_settings`); empty `allowed`: the site's own origin."""

    allowed: frozenset[Origin]
    allowed_hosts: tuple[str, ...]

    @classmethod
    def from_settings(cls) -> OriginPolicy:
        allowed = set()
        for value in settings.WEBSOCKET_ALLOWED_ORIGINS:
            origin = Origin.parse(value)
            if origin is None:
                raise ImproperlyConfigured(
                    f"WEBSOCKET_ALLOWED_ORIGINS: {value!r} is not scheme://host[:port]"
                )
            allowed.add(origin)
        hosts = tuple(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = ("localhost", "127.0.0.1", "[::1]")
        return cls(frozenset(allowed), hosts)

    def own_origin(self, scope: Any) -> Origin | None:
        """The origin of the page that would have been served by this Host, if it is ours."""
        host = _header(scope, b"host")
        if host is None or not validate_host(split_domain_port(host)[0], list(self.allowed_hosts)):
            return None
        scheme = "https" if scope.get("scheme") == "wss" else "http"
        return Origin.parse(f"{scheme}://{host}")

    def refusal(self, scope: Any) -> str | None:
        """None when the handshake's Origin is allowed; else why not (for the log)."""
        raw = _header(scope, b"origin")
        if raw is None:
            return "no Origin header"
        origin = Origin.parse(raw)
        if origin is None:
            return f"Origin {raw!r} is not scheme://host[:port]"
        if self.allowed:
            return None if origin in self.allowed else (
                f"Origin {origin} is not in WEBSOCKET_ALLOWED_ORIGINS"
            )
        own = self.own_origin(scope)
        if own is None:
            return f"the Host header is not in ALLOWED_HOSTS {list(self.allowed_hosts)}"
        return None if origin == own else f"Origin {origin} is not the site's own origin {own}"


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
