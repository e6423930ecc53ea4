"""The contract's names: room slugs, device ids, origins and sender kinds."""

from __future__ import annotations

import re
from typing import Final

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

ROOM_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEVICE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

room_slug_validator = RegexValidator(
    ROOM_RE, "A room is 1-64 characters: a-z, 0-9, '_' and '-', starting with a letter or digit."
)
DEVICE_ID_RULE: Final = (
    "1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit, "
    "not starting with 'bridge' (reserved for the bridge's own MQTT sessions)"
)


def device_id_validator(value: object) -> None:
    if not is_device_id(value):
        raise ValidationError(f"A device id is {DEVICE_ID_RULE}.")

ORIGINS: Final = ("web", "api", "mqtt", "xmpp", "system")
SENDER_KINDS: Final = ("user", "device", "xmpp", "system")


# Names starting with this belong to the bridge's own MQTT sessions: no device may have one.
BRIDGE_PREFIX: Final = "bridge"


def is_bridge_client_id(value: str) -> bool:
    return value.lower().startswith(BRIDGE_PREFIX)


def is_room_slug(value: object) -> bool:
    return isinstance(value, str) and ROOM_RE.fullmatch(value) is not None


def is_device_id(value: object) -> bool:
    """A valid device id: the contract's pattern, and not in the bridge's reserved names."""
    return (
        isinstance(value, str)
        and DEVICE_RE.fullmatch(value) is not None
        and not is_bridge_client_id(value)
    )


def room_group(slug: str) -> str:
    """The channel-layer group every edge joins to hear a room."""
    return f"room.{slug}"


def devices_group(slug: str) -> str:
    """The group of pages showing a room's devices panel (live readings); web only."""
    return f"devices.{slug}"


# Edges that bridge every room join this group to hear of rooms created or changed.
ROOMS_GROUP: Final = "rooms"


def room_access_group(slug: str) -> str:
    """Sockets reading a room join this: told when who may read it changes."""
    return f"access.room.{slug}"


def user_access_group(user_id: int | str) -> str:
    """A user's sockets join this: told on logout, deactivation, a new password, a revoked token."""
    return f"access.user.{user_id}"


# MQTT edges join this to hear that a device, its rooms or its operators changed.
DEVICE_ACCESS_GROUP: Final = "device-access"


COMMAND_PREFIX: Final = "/cmd "


def parse_chat_command(text: str) -> tuple[str, str] | None:
    """`/cmd <device> <text>` in a room: (device id, text), or None for an ordinary message."""
    if not text.startswith(COMMAND_PREFIX):
        return None
    device_id, _, command = text[len(COMMAND_PREFIX):].strip().partition(" ")
    if not device_id or not command.strip():
        return None
    return device_id, command.strip()
