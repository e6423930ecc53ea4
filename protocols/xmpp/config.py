"""The XMPP edge's configuration: a plain value, read once from Django settings."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

REQUIRED = (
    "XMPP_DOMAIN",
    "XMPP_COMPONENT_JID",
    "XMPP_COMPONENT_SECRET",
    "XMPP_SERVER_HOST",
    "XMPP_MUC_SERVICE",
)
HOW_TO_ENABLE = (
    "xmpp: off (set XMPP_DOMAIN, XMPP_COMPONENT_JID, XMPP_COMPONENT_SECRET, "
    "XMPP_SERVER_HOST and XMPP_MUC_SERVICE, and XMPP_SERVER_PORT unless 5347, "
    "to bridge rooms to XMPP)"
)


@dataclass(frozen=True, kw_only=True)
class XmppConfig:
    domain: str
    component: str
    secret: str
    host: str
    port: int
    muc_service: str
    nick: str = "bridge"
    # Per XMPP occupant: a bucket of `burst` messages refilled at `rate` per second.
    rate: float = 2.0
    burst: int = 10
    # Seconds between reconnect attempts grow from `backoff_min` to `backoff_max`.
    backoff_min: float = 0.5
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        for name in ("domain", "component", "muc_service", "nick"):
            value = getattr(self, name)
            if not value or "@" in value or "/" in value:
                raise ImproperlyConfigured(f"XMPP {name} must be a bare domain, got {value!r}")
        if not 0 < self.port < 65536:
            raise ImproperlyConfigured(f"XMPP_SERVER_PORT must be a port, got {self.port}")


def xmpp_config() -> XmppConfig | None:
    """The configuration, or None when XMPP is off (any required variable unset)."""
    values: dict[str, str] = {name: getattr(settings, name, None) or "" for name in REQUIRED}
    if not all(values.values()):
        return None
    return XmppConfig(
        domain=values["XMPP_DOMAIN"],
        component=values["XMPP_COMPONENT_JID"],
        secret=values["XMPP_COMPONENT_SECRET"],
        host=values["XMPP_SERVER_HOST"],
        port=int(getattr(settings, "XMPP_SERVER_PORT", 5347)),
        muc_service=values["XMPP_MUC_SERVICE"],
        nick=str(getattr(settings, "XMPP_BRIDGE_NICK", "bridge")),
        rate=float(getattr(settings, "XMPP_RATE", 2.0)),
        burst=int(getattr(settings, "XMPP_BURST", 10)),
    )
