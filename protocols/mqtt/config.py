"""The protocol server's configuration: a plain value object, read from settings once."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    client_id: str
    # "auto": MQTT 5, falling back to 3.1.1 when the broker refuses 5.
    protocol: str = "auto"
    keepalive: int = 30
    session_expiry: int = 86400
    reconnect_max: int = 30

    def __post_init__(self) -> None:
        if not self.host:
            raise ImproperlyConfigured("MQTT_URL needs a host")
        if not 0 < self.port < 65536:
            raise ImproperlyConfigured(f"MQTT port {self.port} is out of range")
        if self.protocol not in {"auto", "5", "3.1.1"}:
            raise ImproperlyConfigured(f"MQTT protocol must be auto, 5 or 3.1.1, not {self.protocol!r}")
        if not self.client_id or len(self.client_id) > 128:
            raise ImproperlyConfigured("the MQTT client id must be 1-128 characters")

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, *, client_id: str | None = None) -> MqttConfig:
        """mqtt[s]://[user[:password]@]host[:port][/?client_id=ID], with settings for the rest."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ImproperlyConfigured(f"MQTT_URL must start with mqtt:// or mqtts://, got {url!r}")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise ImproperlyConfigured(f"MQTT_URL has a bad port: {exc}") from exc
        query = parse_qs(parts.query)
        chosen = client_id or settings.MQTT_CLIENT_ID or (query.get("client_id") or [""])[0]
        return cls(
            host=parts.hostname or "",
            port=port,
            tls=parts.scheme == "mqtts",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            client_id=chosen or default_client_id(),
            protocol=settings.MQTT_PROTOCOL,
            keepalive=settings.MQTT_KEEPALIVE,
            session_expiry=settings.MQTT_SESSION_EXPIRY,
            reconnect_max=settings.MQTT_RECONNECT_MAX,
        )


def default_client_id() -> str:
    """Stable across restarts on one host, so the broker finds the persistent session.

    Several runmqtt processes on one host need distinct ids: `--client-id` or MQTT_CLIENT_ID.
    """
    return f"bridge-{socket.gethostname()[:60]}"
