"""Model changes that change who may read, post or command, announced after the commit.

Signals rather than calls in each service, because the admin, the commands
and the API all change these rows: whatever path, the open sockets and the
broker hear of it (`bridge.services.access`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model, user_logged_out
from django.db.models.signals import m2m_changed, post_delete, post_save

from bridge.models import ApiToken, Device, Room, RoomMember
from bridge.services.access import access_changed_on_commit, session_tag


def _room_saved(sender: Any, instance: Room, update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and "private" not in update_fields:
        return
    access_changed_on_commit(rooms=[instance.slug], reason="room_changed")


def _room_deleted(sender: Any, instance: Room, **kwargs: Any) -> None:
    access_changed_on_commit(rooms=[instance.slug], reason="room_deleted")


def _member_changed(sender: Any, instance: RoomMember, **kwargs: Any) -> None:
    room = Room.objects.filter(pk=instance.room_id).values_list("slug", flat=True).first()
    if room is not None:
        access_changed_on_commit(rooms=[room], reason="membership_changed")


def _user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    # A login only stamps last_login; anything else (is_active, password) is re-checked.
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    access_changed_on_commit(users=[instance.pk], reason="user_changed")


def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    access_changed_on_commit(users=[instance.pk], reason="user_deleted")


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    # Sent before Django flushes the session: naming the session lets its sockets
    # close without racing the flush; the user's other sessions stay signed in.
    if user is None:
        return
    key = getattr(getattr(request, "session", None), "session_key", None)
    access_changed_on_commit(
        users=[user.pk], reason="logged_out", session=session_tag(key) if key else None
    )


def _user_groups_changed(sender: Any, instance: Any, action: str, pk_set: Any, model: Any,
                         reverse: bool, **kwargs: Any) -> None:
    if not action.startswith("post_"):
        return
    # user.groups.add(...) (instance: a user) or group.user_set.add(...) (instance: a group).
    users = list(pk_set or ()) if reverse else [instance.pk]
    if reverse and action == "post_clear":
        users = []  # the cleared users are gone from the group already; nothing to name
    access_changed_on_commit(users=users, reason="groups_changed")


def _token_changed(sender: Any, instance: ApiToken, **kwargs: Any) -> None:
    access_changed_on_commit(users=[instance.user_id], reason="token_changed")


def _device_changed(sender: Any, instance: Device, **kwargs: Any) -> None:
    access_changed_on_commit(devices=[instance.device_id], reason="device_changed")


def _device_m2m_changed(sender: Any, instance: Any, action: str, pk_set: Any, reverse: bool,
                        **kwargs: Any) -> None:
    if not action.startswith("post_"):
        return
    if not reverse:
        access_changed_on_commit(devices=[instance.device_id], reason="device_changed")
        return
    # room.posting_devices.add(...) or user.operated_devices.add(...): name the devices.
    ids = Device.objects.filter(pk__in=pk_set or ()).values_list("device_id", flat=True)
    access_changed_on_commit(devices=list(ids), reason="device_changed")


def connect() -> None:
    """Called once from BridgeConfig.ready."""
    User = get_user_model()
    post_save.connect(_room_saved, sender=Room, dispatch_uid="access-room-saved")
    post_delete.connect(_room_deleted, sender=Room, dispatch_uid="access-room-deleted")
    post_save.connect(_member_changed, sender=RoomMember, dispatch_uid="access-member-saved")
    post_delete.connect(_member_changed, sender=RoomMember, dispatch_uid="access-member-deleted")
    post_save.connect(_user_saved, sender=User, dispatch_uid="access-user-saved")
    post_delete.connect(_user_deleted, sender=User, dispatch_uid="access-user-deleted")
    user_logged_out.connect(_logged_out, dispatch_uid="access-logged-out")
    m2m_changed.connect(_user_groups_changed, sender=User.groups.through,
                        dispatch_uid="access-user-groups")
    post_save.connect(_token_changed, sender=ApiToken, dispatch_uid="access-token-saved")
    post_delete.connect(_token_changed, sender=ApiToken, dispatch_uid="access-token-deleted")
    post_save.connect(_device_changed, sender=Device, dispatch_uid="access-device-saved")
    post_delete.connect(_device_changed, sender=Device, dispatch_uid="access-device-deleted")
    for through in (Device.post_rooms.through, Device.listen_rooms.through,
                    Device.operators.through):
        m2m_changed.connect(_device_m2m_changed, sender=through,
                            dispatch_uid=f"access-device-m2m-{through.__name__}")
