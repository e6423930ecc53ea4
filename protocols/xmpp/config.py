"""The XMPP edge's configuration: a plain value, read once from Django settings."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from protocols.xmpp.link import REJOIN_HISTORY, WINDOW

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
    """The connection: what the protocol server needs (the application's is `EdgeConfig`)."""

    domain: str
    component: str
    secret: str
    host: str
    port: int
    muc_service: str
    # Seconds between reconnect attempts grow from `backoff_min` to `backoff_max`.
    backoff_min: float = 0.5
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        for name in ("domain", "component", "muc_service"):
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
    )


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """What the bridge's XMPP application needs, read once per component connection."""

    nick: str = "bridge"
    # Seconds between checks for rooms the edge was not told of (and occupant renewals).
    room_sync_interval: float = 30.0
    # Seconds a puppet's join may go unanswered before its messages go through the relay.
    join_timeout: float = 5.0
    # Seconds before a puppet the room refused is tried again (doubling, capped).
    puppet_retry: float = 5.0
    puppet_retry_max: float = 300.0
    # Seconds the room may take to echo a message before it counts as refused and is resent.
    echo_timeout: float = 30.0
    # Messages per room sent and not yet echoed (see `link.WINDOW`): at most the history the
    # relay asks for on rejoin, and it should stay within what the server replays.
    window: int = WINDOW
    # Seconds an occupant that keeps flooding goes without voice (`moderation`); 0: never.
    flood_mute: float = 30.0

    def __post_init__(self) -> None:
        if not self.nick.strip() or "/" in self.nick:
            raise ImproperlyConfigured(f"XMPP_BRIDGE_NICK must be a nickname, got {self.nick!r}")
        if not 1 <= self.window < REJOIN_HISTORY:
            raise ImproperlyConfigured(
                f"XMPP_WINDOW must be from 1 to {REJOIN_HISTORY - 1} (the history asked for on rejoin), "
                f"got {self.window}"
            )


def edge_config() -> EdgeConfig:
    return EdgeConfig(
        nick=str(getattr(settings, "XMPP_BRIDGE_NICK", "bridge")),
        room_sync_interval=float(getattr(settings, "XMPP_ROOM_SYNC_INTERVAL", 30)),
        window=int(getattr(settings, "XMPP_WINDOW", WINDOW)),
        flood_mute=float(getattr(settings, "XMPP_FLOOD_MUTE", 30)),
    )
