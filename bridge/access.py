"""Who may read, post into and administer a room, and command a device: the one place that decides.

Every edge asks these (HTTP API, WebSocket, MQTT, XMPP); they only read.

- A public room: anyone reads it; any signed-in, active user posts into it.
- A private room: its members read and post: users listed directly or through
  one of their groups, XMPP addresses (`room_member_jids`), and devices (rooms
  in `Device.listen_rooms` read, `Device.post_rooms` post). Superusers belong
  to every room.
- Devices, whatever the room's privacy: read the rooms they listen to, post
  into the rooms they post into (the broker enforces the reading part too).
- Commanding a device needs a tie: being a member (by user or group; not
  merely a reader of a public room) of a room the device posts into or listens
  to, or being one of its operators (`Device.operators`), or a superuser.
- Room admins (members with role `admin`, and superusers) manage members.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from bridge.exceptions import Forbidden, NotFound
from bridge.models import Device, Identity, Room, RoomMember
from bridge.names import parse_chat_command


@dataclass(frozen=True)
class XmppActor:
    """An XMPP occupant, by its real bare JID (lower case), as the XMPP edge knows it."""

    jid: str


Actor = AbstractBaseUser | AnonymousUser | Device | XmppActor | None


def _active_user(actor: Actor) -> AbstractBaseUser | None:
    if isinstance(actor, (Device, XmppActor)) or actor is None:
        return None
    if not actor.is_authenticated or not actor.is_active:
        return None
    assert isinstance(actor, AbstractBaseUser)
    return actor


def _is_superuser(user: AbstractBaseUser) -> bool:
    return bool(getattr(user, "is_superuser", False))


def _memberships(user: AbstractBaseUser) -> QuerySet[RoomMember]:
    """The membership rows that name this user, directly or through one of its groups."""
    return RoomMember.objects.filter(Q(user=user.pk) | Q(group__user=user.pk))


def is_member(user: AbstractBaseUser | AnonymousUser | None, room: Room) -> bool:
    """Listed as a member of the room (by user or group), or a superuser. Privacy aside."""
    active = _active_user(user)
    if active is None:
        return False
    return _is_superuser(active) or _memberships(active).filter(room=room).exists()


def _user_for_jid(jid: str) -> AbstractBaseUser | None:
    """The Django user a JID belongs to, where known (a member row or an XMPP identity says so)."""
    row = RoomMember.objects.filter(jid=jid, user__isnull=False).select_related("user").first()
    if row is not None and row.user is not None:
        return row.user
    identity = Identity.objects.filter(
        kind=Identity.Kind.XMPP, jid=jid, user__isnull=False
    ).select_related("user").first()
    return identity.user if identity is not None else None


def _jid_is_member(jid: str, room: Room) -> bool:
    if RoomMember.objects.filter(room=room, jid=jid).exists():
        return True
    user = _user_for_jid(jid)
    return user is not None and is_member(user, room)


def can_read(actor: Actor, room: Room) -> bool:
    """May this actor see the room's messages (history, live stream, MQTT topic, MUC)?"""
    if isinstance(actor, Device):
        return actor.enabled and actor.listen_rooms.filter(pk=room.pk).exists()
    if not room.private:
        return True
    if isinstance(actor, XmppActor):
        return _jid_is_member(actor.jid.lower(), room)
    return is_member(actor, room)


def can_post(actor: Actor, room: Room) -> bool:
    """May this actor post into the room?"""
    if isinstance(actor, Device):
        return actor.enabled and actor.post_rooms.filter(pk=room.pk).exists()
    if isinstance(actor, XmppActor):
        return not room.private or _jid_is_member(actor.jid.lower(), room)
    if _active_user(actor) is None:
        return False
    return can_read(actor, room)


def can_admin(actor: Actor, room: Room) -> bool:
    """May this actor manage the room's members?"""
    user = _active_user(actor)
    if user is None:
        return False
    return _is_superuser(user) or _memberships(user).filter(
        room=room, role=RoomMember.Role.ADMIN
    ).exists()


def _device_rooms(device: Device) -> QuerySet[Room]:
    return Room.objects.filter(Q(posting_devices=device) | Q(listening_devices=device)).distinct()


def can_command(actor: Actor, device: Device) -> bool:
    """May this actor send the device a command (`/cmd` or the commands API)?"""
    if isinstance(actor, Device):
        # Devices sharing a room (when MQTT_CHAT_COMMAND_SENDERS lets devices command at all).
        return actor.enabled and _device_rooms(actor).filter(
            pk__in=_device_rooms(device).values("pk")
        ).exists()
    if isinstance(actor, XmppActor):
        jid = actor.jid.lower()
        if RoomMember.objects.filter(jid=jid, room__in=_device_rooms(device)).exists():
            return True
        user = _user_for_jid(jid)
        return user is not None and can_command(user, device)
    user = _active_user(actor)
    if user is None:
        return False
    if _is_superuser(user) or device.operators.filter(pk=user.pk).exists():
        return True
    return _memberships(user).filter(room__in=_device_rooms(device)).exists()


def actor_of(identity: Identity) -> Actor:
    """The actor behind a stored sender: its user, its device, or its JID (None: nobody)."""
    if identity.kind == Identity.Kind.USER:
        return identity.user
    if identity.kind == Identity.Kind.DEVICE:
        return Device.objects.filter(identity=identity).first()
    if identity.kind == Identity.Kind.XMPP and identity.jid:
        return XmppActor(identity.jid.split("/", 1)[0].lower())
    return None


def check_chat_command(actor: Actor, room: Room, text: str) -> None:
    """A `/cmd <device> <text>` posted into a room must name a device in that room which
    the actor may command; raises the refusal (ordinary messages pass)."""
    parsed = parse_chat_command(text)
    if parsed is None:
        return
    device = Device.objects.filter(device_id=parsed[0]).first()
    if device is None:
        raise NotFound(f"Unknown device {parsed[0]!r}.", code="unknown_device")
    if not _device_rooms(device).filter(pk=room.pk).exists():
        raise Forbidden(f"Device {device.device_id!r} is not in this room.", code="device_not_in_room")
    if not can_command(actor, device):
        raise Forbidden(
            f"You have no tie to device {device.device_id!r}: be a member of a room it is in, "
            "or one of its operators.", code="forbidden_device",
        )


def readable_rooms(actor: Actor) -> QuerySet[Room]:
    """The rooms this actor may read, for room lists."""
    rooms = Room.objects.all()
    if isinstance(actor, Device):
        return rooms.filter(listening_devices=actor)
    user = _active_user(actor)
    if user is None:
        return rooms.filter(private=False)
    if _is_superuser(user):
        return rooms
    member_of = _memberships(user).values("room")
    return rooms.filter(Q(private=False) | Q(pk__in=member_of))


def room_member_jids(room: Room) -> set[str]:
    """Bare JIDs (lower case) of a private room's members, for the XMPP edge's affiliations.

    JID members, plus the JIDs known for member users (a member row carrying
    one, or an XMPP identity linked to the user), directly or through groups.
    """
    rows = RoomMember.objects.filter(room=room)
    jids = {j.lower() for j in rows.exclude(jid="").values_list("jid", flat=True)}
    user_ids = set(rows.filter(user__isnull=False).values_list("user", flat=True))
    user_ids |= set(
        rows.filter(group__isnull=False).values_list("group__user", flat=True).exclude(
            group__user__isnull=True
        )
    )
    identity_jids = Identity.objects.filter(
        kind=Identity.Kind.XMPP, user__in=user_ids
    ).exclude(jid="").values_list("jid", flat=True)
    jids |= {j.lower() for j in identity_jids}
    return jids


def room_admin_jids(room: Room) -> set[str]:
    """Bare JIDs of the room's admins (role `admin` rows carrying a JID): MUC admins."""
    rows = RoomMember.objects.filter(room=room, role=RoomMember.Role.ADMIN).exclude(jid="")
    return {j.lower() for j in rows.values_list("jid", flat=True)}


@dataclass(frozen=True)
class MemberInfo:
    kind: str  # user, group, jid, device
    name: str
    role: str
    jid: str = ""
    # Devices: "post+listen" or "listen".
    access: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"kind": self.kind, "name": self.name, "role": self.role}
        if self.jid:
            out["jid"] = self.jid
        if self.access:
            out["access"] = self.access
        return out


def members_list(*, room: Room) -> list[MemberInfo]:
    """Every member of the room: rows first (users, groups, JIDs), then devices."""
    out: list[MemberInfo] = []
    for row in RoomMember.objects.filter(room=room).select_related("user", "group").order_by("id"):
        if row.user is not None:
            out.append(MemberInfo("user", row.user.get_username(), row.role, jid=row.jid))
        elif row.group is not None:
            out.append(MemberInfo("group", row.group.name, row.role))
        else:
            out.append(MemberInfo("jid", row.jid, row.role))
    posting = set(room.posting_devices.values_list("device_id", flat=True))
    listening = set(room.listening_devices.values_list("device_id", flat=True))
    for device_id in sorted(posting | listening):
        access = "post+listen" if device_id in posting and device_id in listening else (
            "post" if device_id in posting else "listen")
        out.append(MemberInfo("device", device_id, RoomMember.Role.MEMBER, access=access))
    return out
