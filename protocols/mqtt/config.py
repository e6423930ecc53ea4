"""The protocol server's configuration: a plain value object, read from settings once."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from bridge.names import BRIDGE_PREFIX, is_bridge_client_id

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
PRIVATE_ROOMS_OFF = (
    "mqtt: the broker's device permissions are not managed by the bridge (MQTT_DYNSEC off): "
    "private rooms are not published on MQTT, since nothing would keep other devices from "
    "reading them"
)


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
    # The bridge manages device permissions in the broker (mosquitto's dynamic security).
    dynsec: bool = False

    def __post_init__(self) -> None:
        if not self.host:
            raise ImproperlyConfigured("MQTT_URL needs a host")
        if not 0 < self.port < 65536:
            raise ImproperlyConfigured(f"MQTT port {self.port} is out of range")
        if self.protocol not in {"auto", "5", "3.1.1"}:
            raise ImproperlyConfigured(f"MQTT protocol must be auto, 5 or 3.1.1, not {self.protocol!r}")
        if not self.client_id or len(self.client_id) > 128:
            raise ImproperlyConfigured("the MQTT client id must be 1-128 characters")
        if not is_bridge_client_id(self.client_id):
            # A device's client id is its device id, and device ids may not start with
            # "bridge": so no device can ever connect as (and kick) the bridge.
            raise ImproperlyConfigured(
                f"the bridge's MQTT client id must start with {BRIDGE_PREFIX!r} "
                f"(a name no device may have), not {self.client_id!r}"
            )

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
            dynsec=settings.MQTT_DYNSEC,
        )


def default_client_id() -> str:
    """Fixed, so the broker finds the persistent session after a restart, and free of the
    host's name (which devices could learn and claim). Several runmqtt processes need
    distinct ids: `--client-id bridge-2` or MQTT_CLIENT_ID."""
    return BRIDGE_PREFIX
