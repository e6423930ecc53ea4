"""Telling the edges that who may read, post or command changed, after the commit.

Three audiences, each through its own channel-layer groups so no edge gets an
event it has no handler for:
- the WebSocket sockets of a room (`room_access_group`) and of a user
  (`user_access_group`): each re-asks `bridge.access` and closes if it lost access;
- edges that bridge every room (`ROOMS_GROUP`, `rooms.changed`): XMPP keeps
  its rooms and affiliations in step;
- MQTT edges (`DEVICE_ACCESS_GROUP`, `devices.changed`): they push device
  permissions to the broker.

At most once, like every channel-layer message; the MQTT and XMPP edges also
resync periodically. Sent only after the transaction commits, so a listener
re-reading the database sees the change.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from django.db import transaction

from bridge import layer
from bridge.names import DEVICE_ACCESS_GROUP, ROOMS_GROUP, room_access_group, user_access_group

logger = logging.getLogger(__name__)


def session_tag(session_key: str) -> str:
    """What identifies a session in events: a hash, so no usable session key crosses Redis."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


async def aaccess_changed(
    *, rooms: Iterable[str] = (), users: Iterable[int] = (), devices: Iterable[str] = (),
    reason: str = "access_changed", session: str | None = None,
) -> None:
    """`session`: the tag of a session that ended (logout): its sockets close whatever else holds."""
    # Bounded and best effort (bridge.layer): a frozen Redis must not hang an admin save.
    for slug in set(rooms):
        await layer.group_send(room_access_group(slug),
                               {"type": "access.changed", "reason": reason, "room": slug})
        await layer.group_send(ROOMS_GROUP, {"type": "rooms.changed", "room": slug})
    for user_id in set(users):
        event: dict[str, object] = {"type": "access.changed", "reason": reason, "user": user_id}
        if session is not None:
            event["session"] = session
        await layer.group_send(user_access_group(user_id), event)
    device_ids = sorted(set(devices))
    if device_ids:
        await layer.group_send(DEVICE_ACCESS_GROUP, {"type": "devices.changed", "devices": device_ids})


def access_changed(
    *, rooms: Iterable[str] = (), users: Iterable[int] = (), devices: Iterable[str] = (),
    reason: str = "access_changed", session: str | None = None,
) -> None:
    """Announce now (call it after the commit). A failure is logged, never raised: the
    change is stored, and the edges' periodic resync or the next connect applies it."""
    try:
        async_to_sync(aaccess_changed)(
            rooms=rooms, users=users, devices=devices, reason=reason, session=session
        )
    except Exception:  # the channel layer's Redis is away: the change itself is committed
        logger.warning("could not announce an access change (rooms %s, users %s, devices %s)",
                       list(rooms), list(users), list(devices), exc_info=True)


def access_changed_on_commit(
    *, rooms: Iterable[str] = (), users: Iterable[int] = (), devices: Iterable[str] = (),
    reason: str = "access_changed", session: str | None = None,
) -> None:
    """Announce once the current transaction commits (at once outside a transaction)."""
    rooms, users, devices = list(rooms), list(users), list(devices)
    transaction.on_commit(
        lambda: access_changed(
            rooms=rooms, users=users, devices=devices, reason=reason, session=session
        )
    )
