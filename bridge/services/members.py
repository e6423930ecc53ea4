"""Room membership: adding and removing members (users, groups, XMPP addresses, devices).

Devices are members through their rooms (`Device.post_rooms`, `Device.listen_rooms`):
adding one here is the same as `devices add --room`. Every change is
announced after the commit (`bridge.signals`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.auth.models import Group
from django.db import transaction

from bridge.exceptions import InvalidInput, NotFound
from bridge.models import Room, RoomMember
from bridge.selectors import device_get, user_get

# A bare JID: local@domain, no resource; what XMPP affiliations are keyed by.
_BARE_JID = re.compile(r"^[^@/\s\x00-\x1f]{1,256}@[a-z0-9.-]{1,253}$")
ROLES = tuple(RoomMember.Role.values)


@dataclass(frozen=True, kw_only=True)
class MemberRef:
    """Whom a membership call is about: exactly one of these."""

    username: str | None = None
    group: str | None = None
    jid: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.username, self.group, self.jid, self.device) if v]
        if len(given) != 1:
            raise InvalidInput(
                "Name exactly one member: a user, a group, a jid or a device.", code="invalid_member"
            )


def jid_normalized(jid: str) -> str:
    value = jid.strip().lower()
    if not _BARE_JID.fullmatch(value):
        raise InvalidInput(f"{jid!r} is not a bare JID (user@domain, no resource).", code="invalid_jid")
    return value


def _group(name: str) -> Group:
    try:
        return Group.objects.get(name=name)
    except Group.DoesNotExist as exc:
        raise NotFound(f"No group {name!r}.", code="unknown_group") from exc


def member_add(
    *, room: Room, member: MemberRef, role: str = RoomMember.Role.MEMBER, jid: str = "",
    device_posts: bool = True,
) -> str:
    """Add (or update the role of) a member; idempotent. Returns the member's label.

    `jid` with a user: that user's XMPP address (the XMPP edge affiliates it).
    `device_posts`: a device member posts into the room as well as listening.
    """
    if role not in ROLES:
        raise InvalidInput(f"Role must be one of {', '.join(ROLES)}.", code="invalid_role")
    with transaction.atomic():
        if member.device:
            device = device_get(device_id=member.device)
            device.listen_rooms.add(room)
            if device_posts:
                device.post_rooms.add(room)
            return f"device:{device.device_id}"
        if member.username:
            user = user_get(username=member.username)
            defaults = {"role": role, **({"jid": jid_normalized(jid)} if jid else {})}
            row, _ = RoomMember.objects.update_or_create(room=room, user=user, defaults=defaults)
        elif member.group:
            row, _ = RoomMember.objects.update_or_create(
                room=room, group=_group(member.group), defaults={"role": role}
            )
        else:
            assert member.jid
            row, _ = RoomMember.objects.update_or_create(
                room=room, jid=jid_normalized(member.jid), user=None, defaults={"role": role}
            )
    return row.label


def member_remove(*, room: Room, member: MemberRef) -> bool:
    """Remove a member; False when it was not one. A device stops posting into and listening to the room."""
    with transaction.atomic():
        if member.device:
            device = device_get(device_id=member.device)
            was = device.listen_rooms.filter(pk=room.pk).exists() or device.post_rooms.filter(
                pk=room.pk
            ).exists()
            device.listen_rooms.remove(room)
            device.post_rooms.remove(room)
            return was
        rows = RoomMember.objects.filter(room=room)
        if member.username:
            rows = rows.filter(user=user_get(username=member.username).pk)
        elif member.group:
            rows = rows.filter(group=_group(member.group))
        else:
            assert member.jid
            rows = rows.filter(jid=jid_normalized(member.jid), user__isnull=True)
        deleted = 0
        for row in rows:  # one by one, so post_delete announces each
            row.delete()
            deleted += 1
        return deleted > 0
