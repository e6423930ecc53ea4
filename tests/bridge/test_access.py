"""The one selector every edge asks (`bridge.access`), and `rooms members`."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group
from django.core.management import call_command
from django.core.management.base import CommandError

from bridge.access import (
    XmppActor,
    can_admin,
    can_command,
    can_post,
    can_read,
    members_list,
    readable_rooms,
    room_member_jids,
)
from bridge.exceptions import InvalidInput
from bridge.models import Identity, Room, RoomMember
from bridge.services.devices import device_register
from bridge.services.identities import identity_get_or_create
from bridge.services.members import MemberRef, member_add, member_remove
from bridge.services.rooms import room_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def secret() -> Room:
    return room_create(slug="secret", private=True)


@pytest.fixture
def lobby() -> Room:
    return room_create(slug="lobby")


def user(name: str, **extra: object) -> object:
    return get_user_model().objects.create_user(username=name, password="pw", **extra)


def test_private_room_is_for_members_only(secret: Room, lobby: Room) -> None:
    alice, bob = user("alice"), user("bob")
    member_add(room=secret, member=MemberRef(username="alice"))
    assert can_read(alice, secret) and can_post(alice, secret)
    assert not can_read(bob, secret) and not can_post(bob, secret)
    assert not can_read(AnonymousUser(), secret)
    assert can_read(AnonymousUser(), lobby) and not can_post(AnonymousUser(), lobby)
    assert can_post(bob, lobby)
    assert set(readable_rooms(bob)) == {lobby}
    assert set(readable_rooms(alice)) == {lobby, secret}


def test_inactive_user_and_superuser(secret: Room) -> None:
    gone = user("gone", is_active=False)
    member_add(room=secret, member=MemberRef(username="gone"))
    assert not can_read(gone, secret)
    boss = get_user_model().objects.create_superuser(username="boss", password="pw")
    assert can_read(boss, secret) and can_admin(boss, secret)


def test_group_membership_and_admin_role(secret: Room) -> None:
    carol = user("carol")
    staff = Group.objects.create(name="staff")
    member_add(room=secret, member=MemberRef(group="staff"), role="admin")
    assert not can_read(carol, secret)
    carol.groups.add(staff)  # type: ignore[attr-defined]
    assert can_read(carol, secret) and can_admin(carol, secret)
    member_add(room=secret, member=MemberRef(group="staff"))  # back to a plain member
    assert can_read(carol, secret) and not can_admin(carol, secret)


def test_devices_read_what_they_listen_to_and_post_where_allowed(secret: Room, lobby: Room) -> None:
    thermo = device_register(device_id="thermo", post_rooms=[lobby])
    assert can_read(thermo, lobby) and can_post(thermo, lobby)
    assert not can_read(thermo, secret) and not can_post(thermo, secret)
    member_add(room=secret, member=MemberRef(device="thermo"), device_posts=False)
    thermo.refresh_from_db()
    assert can_read(thermo, secret) and not can_post(thermo, secret)
    thermo.enabled = False
    assert not can_read(thermo, lobby)
    assert [m.as_dict() for m in members_list(room=secret)] == [
        {"kind": "device", "name": "thermo", "role": "member", "access": "listen"}
    ]


def test_command_needs_a_tie(secret: Room, lobby: Room) -> None:
    alice, bob, dave = user("alice"), user("bob"), user("dave")
    thermo = device_register(device_id="thermo", post_rooms=[secret, lobby])
    member_add(room=secret, member=MemberRef(username="alice"))
    assert can_command(alice, thermo)
    # Reading a public room the device is in is not a tie.
    assert not can_command(bob, thermo)
    thermo.operators.add(dave)
    assert can_command(dave, thermo)
    assert not can_command(AnonymousUser(), thermo)


def test_xmpp_members_and_jids(secret: Room) -> None:
    alice = user("alice")
    member_add(room=secret, member=MemberRef(jid="Zoe@Example.org"))
    member_add(room=secret, member=MemberRef(username="alice"), jid="alice@example.org")
    identity = identity_get_or_create(kind=Identity.Kind.XMPP, name="al", jid="al@other.org")
    Identity.objects.filter(pk=identity.pk).update(user=alice)
    assert room_member_jids(secret) == {"zoe@example.org", "alice@example.org", "al@other.org"}
    assert can_read(XmppActor("zoe@example.org"), secret)
    assert can_read(XmppActor("alice@example.org"), secret)  # through the user
    assert not can_read(XmppActor("mallory@example.org"), secret)
    assert member_remove(room=secret, member=MemberRef(jid="zoe@example.org"))
    assert "zoe@example.org" not in room_member_jids(secret)


def test_bad_members_are_refused(secret: Room) -> None:
    with pytest.raises(InvalidInput):
        member_add(room=secret, member=MemberRef(jid="no-at-sign"))
    with pytest.raises(InvalidInput):
        MemberRef(username="a", jid="a@b.c")
    assert not RoomMember.objects.exists()


def test_rooms_members_command(secret: Room) -> None:
    user("alice")
    device_register(device_id="thermo")
    out = io.StringIO()
    call_command("rooms", "members", "add", "secret", "--user", "alice", "--role", "admin", stdout=out)
    call_command("rooms", "members", "add", "secret", "--device", "thermo", stdout=out)
    call_command("rooms", "members", "add", "secret", "--jid", "zoe@example.org", stdout=out)
    listing = io.StringIO()
    call_command("rooms", "members", "list", "secret", stdout=listing)
    assert listing.getvalue().splitlines() == [
        "user\talice\tadmin", "jid\tzoe@example.org\tmember", "device\tthermo\tmember\tpost+listen",
    ]
    call_command("rooms", "members", "remove", "secret", "--user", "alice", stdout=out)
    with pytest.raises(CommandError, match="not a member"):
        call_command("rooms", "members", "remove", "secret", "--user", "alice", stdout=out)
    with pytest.raises(CommandError, match="No user"):
        call_command("rooms", "members", "add", "secret", "--user", "nobody", stdout=out)


@pytest.mark.django_db(transaction=True)
def test_changes_are_announced_after_commit() -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from bridge.names import DEVICE_ACCESS_GROUP, ROOMS_GROUP, room_access_group, user_access_group

    layer = get_channel_layer()
    room = room_create(slug="secret", private=True)
    alice = user("alice")
    device_register(device_id="thermo")
    channels = {}
    for group in (room_access_group("secret"), ROOMS_GROUP, user_access_group(alice.pk),
                  DEVICE_ACCESS_GROUP):
        channels[group] = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group, channels[group])

    def received(group: str) -> dict[str, object]:
        return async_to_sync(layer.receive)(channels[group])  # type: ignore[no-any-return]

    member_add(room=room, member=MemberRef(username="alice"))
    assert received(room_access_group("secret"))["type"] == "access.changed"
    assert received(ROOMS_GROUP) == {"type": "rooms.changed", "room": "secret"}
    alice.is_active = False
    alice.save()
    assert received(user_access_group(alice.pk))["reason"] == "user_changed"
    member_add(room=room, member=MemberRef(device="thermo"))
    assert received(DEVICE_ACCESS_GROUP)["devices"] == ["thermo"]


def test_members_and_tokens_in_the_admin(admin_client: object) -> None:
    from django.test import Client

    from bridge.models import ApiToken

    assert isinstance(admin_client, Client)
    room = room_create(slug="secret", private=True)
    bob = user("bob")
    form = {
        "slug": "secret", "title": "", "private": "on",
        "members-TOTAL_FORMS": "1", "members-INITIAL_FORMS": "0",
        "members-MIN_NUM_FORMS": "0", "members-MAX_NUM_FORMS": "1000",
        "members-0-user": str(bob.pk), "members-0-group": "", "members-0-jid": "", "members-0-role": "member",
    }
    response = admin_client.post(f"/admin/bridge/room/{room.pk}/change/", form)
    assert response.status_code == 302, response.content[:3000]
    assert can_read(bob, Room.objects.get(pk=room.pk))
    added = admin_client.post("/admin/bridge/apitoken/add/", {"user": str(bob.pk), "name": "ci"}, follow=True)
    token = ApiToken.objects.get()
    assert token.prefix and token.prefix.encode() in added.content  # the key, shown once
    admin_client.post("/admin/bridge/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked is not None
