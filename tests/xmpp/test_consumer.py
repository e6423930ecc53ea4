"""The XMPP consumer in-process, through the project's router, with XmppCommunicator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from bridge.models import EdgeCursor, Message
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import amessage_post
from bridge.services.rooms import room_create
from project.asgi import application
from protocols.xmpp.testing import XmppCommunicator

pytestmark = pytest.mark.django_db(transaction=True)

ROOM = "lobby@conference.localhost"
RELAY = "bridge.localhost/bridge"
ALICE = "user~alice@bridge.localhost/bridge"


def _messages() -> list[tuple[str, str, str, str]]:
    return list(
        Message.objects.order_by("seq").values_list("sender__kind", "sender__name", "origin", "text")
    )


def _cursor() -> int:
    cursor = EdgeCursor.objects.filter(edge="xmpp", room__slug="lobby").first()
    return cursor.seq if cursor else -1


# A room's owner form as Prosody offers it (abridged): a few of the fields the bridge sets.
OWNER_FORM = [
    {"var": "FORM_TYPE", "type": "hidden", "values": ["http://jabber.org/protocol/muc#roomconfig"],
     "options": []},
    {"var": "muc#roomconfig_roomname", "type": "text-single", "values": [], "options": []},
    {"var": "muc#roomconfig_persistentroom", "type": "boolean", "values": ["0"], "options": []},
    {"var": "muc#roomconfig_publicroom", "type": "boolean", "values": ["1"], "options": []},
    {"var": "muc#roomconfig_membersonly", "type": "boolean", "values": ["0"], "options": []},
    {"var": "muc#roomconfig_whois", "type": "list-single", "values": ["moderators"],
     "options": ["moderators", "anyone"]},
    {"var": "muc#roomconfig_enablearchiving", "type": "boolean", "values": ["0"], "options": []},
]


async def _ready(comm: XmppCommunicator, *, room: str = ROOM, created: bool = True) -> None:
    """Connect and complete the relay's join as a MUC service with room locking would:
    a new room (201) is configured through its owner form before the bridge uses it."""
    await comm.connect()
    await _join_room(comm, room=room, created=created)


async def _join_room(comm: XmppCommunicator, *, room: str = ROOM, created: bool = True) -> None:
    join = await comm.sent()
    assert join == {"type": "xmpp.presence", "sender": RELAY, "to": f"{room}/bridge", "join": True,
                    "history": 50}
    await comm.presence(sender=f"{room}/bridge", to=RELAY,
                        status_codes=[110, 201] if created else [110],
                        real_jid=RELAY, affiliation="owner", role="moderator")
    ask = await comm.sent()
    assert (ask["type"], ask["iq_type"], ask["query"], ask["to"]) == ("xmpp.iq", "get", "owner", room)
    await comm.iq(sender=room, to=RELAY, id=ask["id"], form=OWNER_FORM)
    submit = await comm.sent()
    assert (submit["iq_type"], submit["query"]) == ("set", "owner")
    await comm.iq(sender=room, to=RELAY, id=submit["id"])
    update = await comm.sent()
    assert update["type"] == "xmpp.presence" and "join" not in update
    await comm.presence(sender=f"{room}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY,
                        affiliation="owner", role="moderator")


def system_post(text: str) -> None:
    from bridge.services.identities import system_identity
    from bridge.services.messages import message_post

    message_post(room="lobby", sender=system_identity(), origin="system", text=text)


async def _post_as_web(text: str, name: str = "alice") -> Any:
    sender = await database_sync_to_async(identity_get_or_create)(kind="user", name=name)
    return await amessage_post(room="lobby", sender=sender, origin="web", text=text)


@pytest.fixture
async def comm(transactional_db: None) -> AsyncIterator[XmppCommunicator]:
    await database_sync_to_async(room_create)(slug="lobby")
    communicator = XmppCommunicator(application)
    try:
        yield communicator
    finally:
        await communicator.close()


async def test_a_web_message_is_said_by_the_senders_own_occupant(comm: XmppCommunicator) -> None:
    await _ready(comm)
    posted = await _post_as_web("hello xmpp")

    join = await comm.sent()
    assert join == {"type": "xmpp.presence", "sender": ALICE, "to": f"{ROOM}/alice", "join": True,
                    "history": 0}
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    said = await comm.sent()
    message_id = f"bridge-{posted.envelope['id']}"
    assert said == {"type": "xmpp.message", "sender": ALICE, "to": ROOM, "body": "hello xmpp",
                    "message_type": "groupchat", "id": message_id, "origin_id": message_id}
    assert await database_sync_to_async(_cursor)() == 0

    # The room's echo confirms it: the cursor moves, and nothing is stored from it.
    await comm.message(sender=f"{ROOM}/alice", to=RELAY, id=message_id, origin_id=message_id,
                       body="hello xmpp", stanza_id="room-1")
    assert await _cursor_reaches(1) == 1
    await comm.nothing_sent()
    assert await database_sync_to_async(_messages)() == [("user", "alice", "web", "hello xmpp")]


async def test_a_taken_nick_gets_the_senders_edge_as_suffix(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await _post_as_web("hi")
    await comm.sent()
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, presence_type="error",
                        error_condition="conflict")
    retry = await comm.sent()
    assert retry["to"] == f"{ROOM}/alice (web)" and retry["join"] is True


async def test_an_occupants_message_is_stored_once_under_its_nick(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    for _ in range(2):  # redelivered: same origin-id
        await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="c1", origin_id="c1",
                           stanza_id="room-7", body="hi from xmpp")
    # Without an origin-id, the room's stanza-id keys it.
    for _ in range(2):
        await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="x", stanza_id="room-8",
                           body="second")
    await _stored(2)
    assert await database_sync_to_async(_messages)() == [
        ("xmpp", "carol", "xmpp", "hi from xmpp"),
        ("xmpp", "carol", "xmpp", "second"),
    ]
    jid = await database_sync_to_async(
        lambda: identity_get_or_create(kind="xmpp", name="carol").jid
    )()
    assert jid == "carol@localhost"


async def test_history_replayed_on_join_is_not_stored(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="old", body="from yesterday",
                       delayed=True)
    await comm.nothing_sent()
    assert await database_sync_to_async(_messages)() == []


@pytest.mark.parametrize(
    ("body", "condition"),
    [("x" * 5000, "not-acceptable"), ("bell \x07", "not-acceptable")],
)
async def test_a_refused_body_gets_an_error_to_the_sender(
    comm: XmppCommunicator, body: str, condition: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="bad-1", body=body)
    error = await comm.sent()
    assert error["type"] == "xmpp.error"
    assert (error["to"], error["id"], error["condition"]) == ("carol@localhost/phone", "bad-1", condition)
    assert "refused a message of carol" in caplog.text
    assert await database_sync_to_async(_messages)() == []


async def test_a_message_to_an_unknown_address_gets_item_not_found(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.message(sender="carol@localhost/phone", to="nosuchroom@bridge.localhost",
                       message_type="chat", id="m1", body="anyone?")
    error = await comm.sent()
    assert (error["type"], error["condition"], error["to"]) == (
        "xmpp.error", "item-not-found", "carol@localhost/phone"
    )


async def test_a_direct_message_to_the_bridge_answers_help_with_the_rooms(
    comm: XmppCommunicator,
) -> None:
    await _ready(comm)
    await comm.message(sender="carol@localhost/phone", to="bridge.localhost",
                       message_type="chat", id="m1", body="help")
    reply = await comm.sent()
    assert reply["type"] == "xmpp.message" and reply["message_type"] == "chat"
    assert reply["to"] == "carol@localhost/phone"
    assert ROOM in reply["body"] and "help" in reply["body"]


async def _archive_answers(comm: XmppCommunicator, *archived: dict[str, Any]) -> None:
    """Ours were unconfirmed at the drop: the relay asks the room's archive, which answers
    with its last messages (as delayed messages) and the IQ result."""
    query = await comm.sent()
    assert (query["type"], query["query"], query["to"], query["iq_type"]) == (
        "xmpp.iq", "archive", ROOM, "set")
    for fields in archived:
        await comm.message(to=RELAY, delayed=True, **fields)
    await comm.iq(sender=ROOM, to=RELAY, id=query["id"])


async def _drop_and_rejoin_with_unconfirmed(comm: XmppCommunicator) -> tuple[Any, Any]:
    """Two messages of alice's puppet sent, neither echoed; the stream drops and the relay
    rejoins. As after a restart of the XMPP server: the puppet is no occupant any more."""
    await _ready(comm)
    first = await _post_as_web("one")
    await comm.sent()  # puppet join
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    await comm.sent()  # "one", never echoed
    second = await _post_as_web("two")
    await comm.sent()  # "two", never echoed
    await comm.drop()
    await comm.connect()
    assert (await comm.sent())["join"] is True
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    await comm.sent()  # presence update
    return first, second


async def _only_the_second_is_sent_again(comm: XmppCommunicator, second: Any) -> None:
    """alice's puppet rejoins and says "two" alone; its echo moves the cursor past both."""
    rejoin = await comm.sent()
    assert rejoin["sender"] == ALICE and rejoin["join"] is True
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    resent = await comm.sent()
    assert resent["body"] == "two" and resent["id"] == f"bridge-{second.envelope['id']}"
    await comm.message(sender=f"{ROOM}/alice", to=RELAY, id=resent["id"], origin_id=resent["id"],
                       body="two")
    assert await _cursor_reaches(2) == 2


# Seated: alice's puppet is back in the room when the history comes (a dropped component
# stream); not seated: it is no occupant yet (a restarted server), yet its nick says it is ours.
@pytest.mark.parametrize("seated", [True, False], ids=["puppet-seated", "puppet-not-seated"])
async def test_after_a_drop_unconfirmed_messages_are_sent_again_unless_the_room_has_them(
    comm: XmppCommunicator, seated: bool
) -> None:
    first, second = await _drop_and_rejoin_with_unconfirmed(comm)
    assert await database_sync_to_async(_cursor)() == 0
    # The room's replayed history shows "one" arrived before the drop.
    one_id = f"bridge-{first.envelope['id']}"
    if seated:
        await comm.presence(sender=f"{ROOM}/alice", to=RELAY, real_jid=ALICE)
    await comm.message(sender=f"{ROOM}/alice", to=RELAY, id=one_id, origin_id=one_id, body="one",
                       delayed=True)
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    await _archive_answers(comm)
    await _only_the_second_is_sent_again(comm, second)
    await comm.nothing_sent()


async def test_a_restarted_bridge_with_messages_past_its_cursor_asks_the_archive_first(
    comm: XmppCommunicator,
) -> None:
    """A new runxmpp does not know what its predecessor had in flight (perhaps when the
    server restarted too): stored messages past the cursor make it ask the room's archive."""
    from bridge.models import Room
    from protocols.xmpp import store

    lobby = await database_sync_to_async(Room.objects.get)(slug="lobby")
    await database_sync_to_async(store.cursor_seq)(room_pk=lobby.pk)  # a runxmpp ran before
    first = await _post_as_web("one")  # stored while none ran, or sent by the last one
    await _ready(comm)
    one_id = f"bridge-{first.envelope['id']}"
    await _archive_answers(comm, {"sender": f"{ROOM}/alice", "id": "a1", "origin_id": one_id,
                                  "body": "one"})
    assert await _cursor_reaches(1) == 1  # in the room already: not said again
    assert await comm.nothing_sent()


async def test_history_claiming_our_id_under_another_nick_does_not_stop_a_resend(
    comm: XmppCommunicator,
) -> None:
    first, _ = await _drop_and_rejoin_with_unconfirmed(comm)
    forged = f"bridge-{first.envelope['id']}"
    await comm.message(sender=f"{ROOM}/mallory", to=RELAY, id=forged, origin_id=forged, body="one",
                       delayed=True)
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    await _archive_answers(comm, {"sender": f"{ROOM}/mallory", "id": "a1", "origin_id": forged,
                                  "body": "one"})
    assert (await comm.sent())["join"] is True
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    resent = await comm.sent()
    assert resent["body"] == "one" and resent["id"] == forged


async def test_after_a_server_restart_that_replays_no_history_the_archive_says_what_it_has(
    comm: XmppCommunicator,
) -> None:
    first, second = await _drop_and_rejoin_with_unconfirmed(comm)
    # No history (ejabberd keeps it in memory): the echo of the relay's presence comes first.
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    one_id = f"bridge-{first.envelope['id']}"
    await _archive_answers(
        comm,
        {"sender": f"{ROOM}/carol", "id": "a0", "origin_id": "c0", "body": "before"},
        {"sender": f"{ROOM}/alice", "id": "a1", "origin_id": one_id, "body": "one"},
    )
    await _only_the_second_is_sent_again(comm, second)
    assert [text for *_, text in await database_sync_to_async(_messages)()] == ["one", "two"]


async def test_an_archive_query_the_room_refuses_falls_back_to_the_history(
    comm: XmppCommunicator, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = await _drop_and_rejoin_with_unconfirmed(comm)
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    query = await comm.sent()
    await comm.iq(sender=ROOM, to=RELAY, id=query["id"], iq_type="error",
                  error_condition="feature-not-implemented")
    assert (await comm.sent())["join"] is True
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    assert (await comm.sent())["body"] == "one"  # nothing said it arrived: sent again
    assert "refused the archive query (feature-not-implemented)" in caplog.text


async def test_a_drop_with_nothing_in_flight_asks_no_archive(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.drop()
    await comm.connect()
    assert (await comm.sent())["join"] is True
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    await comm.sent()  # presence update
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    assert await comm.nothing_sent()


async def test_messages_from_xmpp_are_not_echoed_back(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="c1", origin_id="c1", body="hi")
    assert await comm.nothing_sent(0.5)
    assert await database_sync_to_async(_cursor)() == 1


async def test_a_room_created_while_connected_is_joined_at_once(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await database_sync_to_async(room_create)(slug="garden", title="Garden")
    await _join_room(comm, room="garden@conference.localhost")


async def test_a_room_whose_announcement_was_lost_is_joined_by_the_resync(comm: XmppCommunicator, settings: Any) -> None:
    settings.XMPP_ROOM_SYNC_INTERVAL = 1
    await _ready(comm)
    # Created without the service (so without an announcement), as by another process's lost message.
    from bridge.models import Room

    await database_sync_to_async(Room.objects.create)(slug="cellar")
    join = await comm.sent(timeout=5)
    assert join["to"] == "cellar@conference.localhost/bridge" and join["join"] is True


async def test_xmpp_occupants_are_present_for_the_web(comm: XmppCommunicator) -> None:
    from channels.layers import get_channel_layer

    from bridge.names import room_group

    layer = get_channel_layer()
    web = await layer.new_channel()
    await layer.group_add(room_group("lobby"), web)
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/dave", to=RELAY, real_jid="dave@localhost/gajim")
    online = await layer.receive(web)
    assert (online["type"], online["who"], online["state"]) == ("room.presence", {"kind": "xmpp", "name": "dave"}, "online")
    await comm.presence(sender=f"{ROOM}/dave", to=RELAY, real_jid="dave@localhost/gajim", presence_type="unavailable")
    offline = await layer.receive(web)
    assert (offline["who"], offline["state"]) == ({"kind": "xmpp", "name": "dave"}, "offline")
    # Our own occupants (puppets, the relay) are never announced as XMPP users.
    await comm.presence(sender=f"{ROOM}/alice", to=RELAY, real_jid=ALICE)
    await comm.presence(sender=f"{ROOM}/erin", to=RELAY, real_jid="erin@localhost/x")
    assert (await layer.receive(web))["who"] == {"kind": "xmpp", "name": "erin"}


async def test_a_private_room_is_members_only_with_its_members_jids(comm: XmppCommunicator) -> None:
    from django.contrib.auth import get_user_model

    from bridge.models import Room
    from bridge.services.identities import identity_link_jid
    from bridge.services.members import MemberRef, member_add

    await _ready(comm)
    user = await database_sync_to_async(get_user_model().objects.create_user)("ivy", password="x")
    await database_sync_to_async(identity_link_jid)(user=user, jid="ivy@localhost")
    await database_sync_to_async(room_create)(slug="lobby", private=True)
    # Made private: configured again, members-only and hidden ...
    ask = await comm.sent()
    assert (ask["iq_type"], ask["query"]) == ("get", "owner")
    await comm.iq(sender=ROOM, to=RELAY, id=ask["id"], form=OWNER_FORM)
    submit = await comm.sent()
    assert submit["form"]["muc#roomconfig_membersonly"] == ["1"]
    assert submit["form"]["muc#roomconfig_publicroom"] == ["0"]
    await comm.iq(sender=ROOM, to=RELAY, id=submit["id"])
    # ... then its member list is brought in step with Django's.
    members = await comm.sent()
    assert (members["iq_type"], members["query"], members["items"]) == (
        "get", "admin", [{"jid": "", "affiliation": "member"}]
    )
    await database_sync_to_async(
        lambda: member_add(room=Room.objects.get(slug="lobby"), member=MemberRef(username="ivy"))
    )()
    await comm.iq(sender=ROOM, to=RELAY, id=members["id"], items=[
        {"jid": "gone@localhost", "affiliation": "member"},
        {"jid": "user~alice@bridge.localhost", "affiliation": "member"},
    ])
    change = await comm.sent()
    assert (change["iq_type"], change["query"]) == ("set", "admin")
    assert change["items"] == [{"jid": "ivy@localhost", "affiliation": "member"},
                               {"jid": "gone@localhost", "affiliation": "none"}]


async def test_a_puppet_the_room_refuses_speaks_through_the_relay(
    comm: XmppCommunicator, caplog: pytest.LogCaptureFixture
) -> None:
    await _ready(comm)
    posted = await _post_as_web("hello xmpp")
    assert (await comm.sent())["sender"] == ALICE  # the puppet's join
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, presence_type="error",
                        error_condition="forbidden")
    said = await comm.sent()
    message_id = f"bridge-{posted.envelope['id']}"
    assert (said["sender"], said["body"], said["id"]) == (RELAY, "<alice> hello xmpp", message_id)
    assert caplog.text.count("cannot join") == 1
    # The next message does not wait for the puppet either, and the echo moves the cursor.
    await _post_as_web("and again")
    assert (await comm.sent())["body"] == "<alice> and again"
    await comm.message(sender=f"{ROOM}/bridge", to=RELAY, id=message_id, origin_id=message_id,
                       body="<alice> hello xmpp")
    assert await _cursor_reaches(1) == 1
    await comm.nothing_sent()
    assert caplog.text.count("cannot join") == 1  # logged once per streak


async def test_a_message_the_room_bounces_is_retried_then_skipped(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await database_sync_to_async(system_post)("system says")
    for _ in range(3):
        said = await comm.sent()
        assert (said["sender"], said["body"]) == (RELAY, "system says")
        await comm.message(sender=ROOM, to=RELAY, id=said["id"], message_type="error",
                           error_condition="not-acceptable")
    # Given up on: the room is not held by it; the next message goes out.
    assert await _cursor_reaches(1) == 1
    await comm.nothing_sent()
    await _post_as_web("after it")
    assert (await comm.sent())["sender"] == ALICE  # the puppet's join for "after it"


async def test_a_room_the_bridge_does_not_own_is_bridged_and_says_what_it_lacks(
    comm: XmppCommunicator, caplog: pytest.LogCaptureFixture
) -> None:
    from bridge.health import HEALTH

    await comm.connect()
    await comm.sent()
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY,
                        affiliation="none", role="participant")
    update = await comm.sent()  # no owner form: straight to catching up
    assert update["type"] == "xmpp.presence"
    await comm.presence(sender=f"{ROOM}/bridge", to=RELAY, status_codes=[110], real_jid=RELAY)
    await _post_as_web("still bridged")
    assert (await comm.sent())["sender"] == ALICE
    assert "does not give the bridge: ownership" in caplog.text
    check = HEALTH.snapshot()["xmpp:room:lobby"]
    assert not check.ok and not check.critical and "ownership" in check.detail
    # ... and the admin shows it.
    from protocols.xmpp.models import RoomLinkStatus

    status = await database_sync_to_async(RoomLinkStatus.objects.get)(room__slug="lobby")
    assert (status.state, status.affiliation) == ("ready", "none") and "ownership" in status.lacks


def test_the_owner_form_keeps_the_servers_values_and_sets_ours_where_offered() -> None:
    from protocols.xmpp.rooms import form_submission, room_config_wanted

    form = [*OWNER_FORM[:-1], {"var": "muc#roomconfig_whois", "type": "list-single",
                               "values": ["moderators"], "options": ["moderators", "anyone"]}]
    submitted, lacks = form_submission(form, room_config_wanted(title="Lobby", private=True))
    assert submitted["muc#roomconfig_roomname"] == ["Lobby"]
    assert submitted["muc#roomconfig_persistentroom"] == ["1"]
    assert submitted["muc#roomconfig_membersonly"] == ["1"]
    assert submitted["muc#roomconfig_publicroom"] == ["0"]
    assert submitted["muc#roomconfig_whois"] == ["moderators"]  # not ours to change
    assert "muc#roomconfig_historylength" not in submitted  # not offered: not submitted
    assert lacks == ["archiving (no MAM switch in the room's form)"]
    assert submitted.get("muc#roomconfig_moderatedroom", ["0"]) == ["0"]


def test_where_newcomers_keep_their_voice_the_room_is_moderated_so_a_mute_holds() -> None:
    """ejabberd lets visitors speak in unmoderated rooms; its members_by_default keeps every
    newcomer a participant in a moderated one."""
    from protocols.xmpp.rooms import form_submission, room_config_wanted

    form = [*OWNER_FORM,
            {"var": "muc#roomconfig_moderatedroom", "type": "boolean", "values": ["0"], "options": []},
            {"var": "members_by_default", "type": "boolean", "values": ["0"], "options": []}]
    submitted, _ = form_submission(form, room_config_wanted(title="Lobby", private=False))
    assert submitted["muc#roomconfig_moderatedroom"] == ["1"]
    assert submitted["members_by_default"] == ["1"]


async def test_a_puppet_join_nobody_answers_does_not_hold_the_room(
    comm: XmppCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protocols.xmpp import consumers
    from protocols.xmpp.config import EdgeConfig

    monkeypatch.setattr(consumers, "edge_config", lambda: EdgeConfig(join_timeout=0.3))
    await _ready(comm)
    await _post_as_web("anyone there?")
    assert (await comm.sent())["sender"] == ALICE  # the join, never answered
    said = await comm.sent(timeout=5)
    assert (said["sender"], said["body"]) == (RELAY, "<alice> anyone there?")


# --- identities: the real JID, not the nick ------------------------------------------------


def _senders() -> list[tuple[str, str, str]]:
    return list(Message.objects.order_by("seq").values_list("sender__kind", "sender__name", "text"))


async def _cursor_reaches(seq: int) -> int:
    """The xmpp cursor once it is at `seq` (or what it is after 10 s)."""
    try:
        async with asyncio.timeout(10):
            while (now := await database_sync_to_async(_cursor)()) < seq:
                await asyncio.sleep(0.05)
    except TimeoutError:
        now = await database_sync_to_async(_cursor)()
    return now


async def _stored(count: int) -> list[tuple[str, str, str]]:
    """The stored messages once there are `count` (the consumer works through its events
    on its own time: a busy machine is slower than any fixed wait)."""
    async with asyncio.timeout(10):
        while len(stored := await database_sync_to_async(_senders)()) < count:
            await asyncio.sleep(0.05)
    return stored


async def test_a_nick_change_keeps_the_senders_identity(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="c1", origin_id="c1", body="as carol")
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone",
                        presence_type="unavailable", status_codes=[303], nick="caroline")
    await comm.presence(sender=f"{ROOM}/caroline", to=RELAY, real_jid="carol@localhost/phone")
    await comm.message(sender=f"{ROOM}/caroline", to=RELAY, id="c2", origin_id="c2", body="renamed")
    assert await _stored(2) == [("xmpp", "carol", "as carol"), ("xmpp", "carol", "renamed")]


async def test_another_account_taking_a_nick_does_not_post_as_its_owner(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="c1", origin_id="c1", body="real carol")
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone",
                        presence_type="unavailable")
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="mallory@localhost/x")
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="m1", origin_id="m1", body="fake carol")
    # ... nor as a bridged web user whose nick it takes.
    await comm.presence(sender=f"{ROOM}/alice", to=RELAY, real_jid="mallory@localhost/x")
    await comm.message(sender=f"{ROOM}/alice", to=RELAY, id="m2", origin_id="m2", body="fake alice")
    assert await _stored(3) == [
        ("xmpp", "carol", "real carol"),
        ("xmpp", "carol (mallory@localhost)", "fake carol"),
        ("xmpp", "carol (mallory@localhost)", "fake alice"),
    ]


async def test_a_nick_squatter_has_no_fresh_quota(
    comm: XmppCommunicator, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protocols.xmpp import inbound

    # A burst of 10 and (practically) no refill, however slow the machine is today.
    settings.XMPP_RATE, settings.XMPP_BURST = 0.001, 10
    await _ready(comm)
    for nick in ("m1", "m2", "m3"):
        await comm.presence(sender=f"{ROOM}/{nick}", to=RELAY, real_jid="mallory@localhost/x")
    for i in range(12):  # the eleventh is refused, whatever the nick
        await comm.message(sender=f"{ROOM}/m{i % 3 + 1}", to=RELAY, id=f"f{i}", origin_id=f"f{i}",
                           body=f"flood {i}")
    error = await comm.sent()
    assert (error["type"], error["condition"], error["to"]) == (
        "xmpp.error", "resource-constraint", "mallory@localhost/x"
    )
    # The twelfth is counted, not answered: at most one error a second per sender (an error
    # per stanza doubled what a flood cost the XMPP server).
    assert await comm.nothing_sent()
    assert len(await database_sync_to_async(_senders)()) == 10
    monkeypatch.setattr(inbound, "NOTICE_EVERY", 0.0)
    await comm.message(sender=f"{ROOM}/m1", to=RELAY, id="f12", origin_id="f12", body="flood 12")
    error = await comm.sent()
    assert error["condition"] == "resource-constraint" and "1 more not bridged" in error["text"]


async def _flood(comm: XmppCommunicator, nick: str, count: int, *, prefix: str) -> None:
    """`count` messages from `nick` in the room, back to back ("flood 0", "flood 1", ...)."""
    for i in range(count):
        await comm.message(sender=f"{ROOM}/{nick}", to=RELAY, id=f"{prefix}{i}", body=f"flood {i}")


async def test_an_occupant_that_keeps_flooding_loses_its_voice_then_gets_it_back(
    comm: XmppCommunicator, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.XMPP_RATE, settings.XMPP_BURST, settings.XMPP_FLOOD_MUTE = 0.001, 2, 0.5
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await _flood(comm, "carol", 6, prefix="c")  # 2 admitted, then refused 4 times: not yet a flooder
    assert (await comm.sent())["condition"] == "resource-constraint"
    assert await comm.nothing_sent()
    # She changes nick; the fifth refusal in a row still counts (her real JID is the key).
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, presence_type="unavailable",
                        status_codes=[303], nick="carla", real_jid="carol@localhost/phone")
    await comm.presence(sender=f"{ROOM}/carla", to=RELAY, real_jid="carol@localhost/phone")
    await comm.message(sender=f"{ROOM}/carla", to=RELAY, id="c6", body="flood 6")
    mute = await comm.sent()
    assert (mute["type"], mute["to"], mute["iq_type"], mute["query"]) == ("xmpp.iq", ROOM, "set", "admin")
    assert [(r["nick"], r["role"]) for r in mute["roles"]] == [("carla", "visitor")]
    assert "Flooding" in mute["roles"][0]["reason"]
    await comm.iq(sender=ROOM, to=RELAY, id=mute["id"])
    voice = await comm.sent(timeout=5)  # after XMPP_FLOOD_MUTE, at the next tick
    assert [(r["nick"], r["role"]) for r in voice["roles"]] == [("carla", "participant")]
    assert "keeps flooding" in caplog.text and "gets its voice back" in caplog.text


async def test_a_muted_occupant_that_rejoins_is_muted_again(comm: XmppCommunicator, settings: Any) -> None:
    """Roles do not outlive a visit: back in the room, the flooder has its voice again."""
    settings.XMPP_RATE, settings.XMPP_BURST, settings.XMPP_FLOOD_MUTE = 0.001, 1, 30
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await _flood(comm, "carol", 6, prefix="c")
    assert (await comm.sent())["condition"] == "resource-constraint"
    mute = await comm.sent()
    await comm.iq(sender=ROOM, to=RELAY, id=mute["id"])
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone", role="visitor")
    assert await comm.nothing_sent()  # the room shows the mute: nothing more to do
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, presence_type="unavailable",
                        real_jid="carol@localhost/phone", role="none")
    await comm.presence(sender=f"{ROOM}/carol2", to=RELAY, real_jid="carol@localhost/laptop")
    again = await comm.sent()
    assert [(r["nick"], r["role"]) for r in again["roles"]] == [("carol2", "visitor")]
    assert "rejoined" in again["roles"][0]["reason"]


@pytest.mark.parametrize("shown", [{"affiliation": "admin"}, {"affiliation": "owner"},
                                   {"role": "moderator"}])
async def test_owners_admins_and_moderators_are_never_muted(comm: XmppCommunicator, settings: Any,
                                                            shown: dict[str, str]) -> None:
    settings.XMPP_RATE, settings.XMPP_BURST, settings.XMPP_FLOOD_MUTE = 0.001, 1, 30
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/boss", to=RELAY, real_jid="boss@localhost/pc", **shown)
    await _flood(comm, "boss", 10, prefix="b")
    assert (await comm.sent())["type"] == "xmpp.error"  # the throttle's error, no mute
    assert await comm.nothing_sent()


async def test_a_mute_the_room_refuses_is_logged(comm: XmppCommunicator, settings: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An occupant the room will not let us silence: logged, and no voice "given back" later
    (that could set an admin's role)."""
    settings.XMPP_RATE, settings.XMPP_BURST, settings.XMPP_FLOOD_MUTE = 0.001, 1, 0.3
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/admin", to=RELAY, real_jid="admin@localhost/pc")
    await _flood(comm, "admin", 6, prefix="a")
    await comm.sent()  # the throttle's error
    mute = await comm.sent()
    await comm.iq(sender=ROOM, to=RELAY, id=mute["id"], iq_type="error", error_condition="not-allowed")
    assert await comm.nothing_sent(timeout=2.5)  # past XMPP_FLOOD_MUTE and the next tick
    assert "refused a voice change (not-allowed)" in caplog.text
    assert "refused an affiliation change" not in caplog.text


async def test_no_mute_where_the_setting_is_zero(comm: XmppCommunicator, settings: Any) -> None:
    settings.XMPP_RATE, settings.XMPP_BURST, settings.XMPP_FLOOD_MUTE = 0.001, 1, 0
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await _flood(comm, "carol", 10, prefix="c")
    assert (await comm.sent())["type"] == "xmpp.error"
    assert await comm.nothing_sent()


async def test_a_linked_account_speaks_as_its_user_with_one_presence(comm: XmppCommunicator) -> None:
    from channels.layers import get_channel_layer
    from django.contrib.auth import get_user_model

    from bridge.names import room_group
    from bridge.services.identities import identity_link_jid

    user = await database_sync_to_async(get_user_model().objects.create_user)("dora", password="x")
    await database_sync_to_async(identity_link_jid)(user=user, jid="dora@localhost")
    layer = get_channel_layer()
    web = await layer.new_channel()
    await layer.group_add(room_group("lobby"), web)
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/dee", to=RELAY, real_jid="Dora@localhost/laptop")
    online = await layer.receive(web)
    assert (online["who"], online["state"]) == ({"kind": "user", "name": "dora"}, "online")
    # She is in the room in person: no puppet joins for her.
    assert await comm.nothing_sent(0.5)
    await comm.message(sender=f"{ROOM}/dee", to=RELAY, id="d1", origin_id="d1", body="it is me")
    assert await _stored(1) == [("user", "dora", "it is me")]


async def test_link_by_direct_message_with_the_pages_code(comm: XmppCommunicator) -> None:
    from django.contrib.auth import get_user_model

    from bridge.selectors import linked_jids
    from protocols.xmpp.linking import link_token

    user = await database_sync_to_async(get_user_model().objects.create_user)("erin", password="x")
    token = await database_sync_to_async(link_token)(user=user)
    await _ready(comm)
    await comm.message(sender="erin@localhost/phone", to="bridge.localhost", message_type="chat",
                       id="l1", body="link not-a-code")
    assert "Not linked" in (await comm.sent())["body"]
    await comm.message(sender="erin@localhost/phone", to="bridge.localhost", message_type="chat",
                       id="l2", body=f"link {token}")
    reply = await comm.sent()
    assert reply["to"] == "erin@localhost/phone" and reply["body"].startswith("Linked")
    assert await database_sync_to_async(linked_jids)(user=user) == ["erin@localhost"]


async def test_a_batch_of_device_messages_wakes_the_relay_once_for_all(comm: XmppCommunicator) -> None:
    from bridge.services.messages import message_store, messages_fanout

    await _ready(comm)
    device = await database_sync_to_async(identity_get_or_create)(kind="device", name="sensor-1")
    stored = [
        (await database_sync_to_async(message_store)(room="lobby", sender=device, origin="mqtt", text=t)).envelope
        for t in ("one", "two")
    ]
    await messages_fanout(stored)

    join = await comm.sent()
    assert join["type"] == "xmpp.presence" and join["to"] == f"{ROOM}/sensor-1"
    await comm.presence(sender=f"{ROOM}/sensor-1", to=join["sender"], status_codes=[110])
    said = [await comm.sent(), await comm.sent()]
    assert [s["body"] for s in said] == ["one", "two"]


async def test_a_database_that_is_away_delays_a_message_and_loses_nothing(
    comm: XmppCommunicator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import OperationalError

    from protocols.xmpp import store

    real = store.occupant_identity
    failures = iter([OperationalError("server closed the connection unexpectedly")] * 2)

    def flaky(**kwargs: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(**kwargs)

    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    monkeypatch.setattr(store, "occupant_identity", flaky)
    await comm.message(sender=f"{ROOM}/carol", to=RELAY, id="c1", origin_id="c1", body="patience")
    assert await _stored(1) == [("xmpp", "carol", "patience")]
    assert "trying again until it works" in caplog.text


# --- a burst: message stanzas that arrived back to back (`xmpp.messages`) -------------------


def _said(nick: str, body: str, origin_id: str = "", **fields: Any) -> dict[str, Any]:
    return {"sender": f"{ROOM}/{nick}", "to": RELAY, "id": origin_id, "origin_id": origin_id,
            "body": body, **fields}


async def test_a_batch_is_stored_in_order_once_with_refusals_and_history_left_out(
    comm: XmppCommunicator,
) -> None:
    await _ready(comm)
    await comm.presence(sender=f"{ROOM}/carol", to=RELAY, real_jid="carol@localhost/phone")
    await comm.presence(sender=f"{ROOM}/dave", to=RELAY, real_jid="dave@localhost/pc")
    await comm.messages(
        _said("carol", "one", "c1"),
        _said("carol", "from yesterday", "old", delayed=True),
        _said("dave", "two", "d1"),
        _said("carol", "one", "c1"),  # redelivered in the middle of the batch
        _said("carol", "x" * 5000, "bad-1"),
        _said("dave", "three", "d2"),
    )
    error = await comm.sent()
    assert (error["type"], error["to"], error["id"], error["condition"]) == (
        "xmpp.error", "carol@localhost/phone", "bad-1", "not-acceptable"
    )
    assert await _stored(3) == [("xmpp", "carol", "one"), ("xmpp", "dave", "two"), ("xmpp", "dave", "three")]
    # Nothing of it goes back to the room; the cursor passes all of it.
    assert await _cursor_reaches(3) == 3
    assert await comm.nothing_sent()
    await comm.messages(_said("dave", "three", "d2"), _said("carol", "four", "c2"))
    assert [text for *_, text in await _stored(4)] == ["one", "two", "three", "four"]


async def test_a_batch_spanning_rooms_goes_to_each(comm: XmppCommunicator) -> None:
    await _ready(comm)
    await database_sync_to_async(room_create)(slug="garden", title="Garden")
    garden = "garden@conference.localhost"
    await _join_room(comm, room=garden)
    await comm.messages(
        _said("carol", "in the lobby", "c1"),
        {"sender": f"{garden}/carol", "to": RELAY, "id": "g1", "origin_id": "g1", "body": "in the garden"},
        _said("carol", "lobby again", "c2"),
    )
    await _stored(3)
    rooms = await database_sync_to_async(
        lambda: list(Message.objects.order_by("room__slug", "seq").values_list("room__slug", "seq", "text"))
    )()
    assert rooms == [("garden", 1, "in the garden"), ("lobby", 1, "in the lobby"), ("lobby", 2, "lobby again")]


async def test_a_batch_whose_store_fails_is_stored_once_when_the_database_is_back(
    comm: XmppCommunicator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    from protocols.xmpp import store

    real = store.occupant_messages_store
    failures = []

    def failing_once(**kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise OperationalError("database is locked")
        return real(**kwargs)

    monkeypatch.setattr(store, "occupant_messages_store", failing_once)
    await _ready(comm)
    await comm.messages(_said("carol", "one", "c1"), _said("carol", "two", "c2"))
    assert [text for *_, text in await _stored(2)] == ["one", "two"]
    assert failures == [1]


async def test_echoes_in_a_batch_count_before_a_bounce_behind_them(comm: XmppCommunicator) -> None:
    await _ready(comm)
    first = await _post_as_web("one")
    await comm.sent()  # puppet join
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    one = await comm.sent()
    await _post_as_web("two")
    two = await comm.sent()
    assert (one["body"], two["body"]) == ("one", "two")
    await comm.messages(
        _said("alice", "one", one["id"]),  # the room has "one"
        {"sender": ROOM, "to": ALICE, "id": two["id"], "origin_id": two["id"], "message_type": "error",
         "error_condition": "not-acceptable", "body": "two"},
    )
    # Only "two" goes again (its puppet rejoins first: most refusals mean it is out).
    rejoin = await comm.sent()
    assert rejoin["to"] == f"{ROOM}/alice" and rejoin["join"] is True
    await comm.presence(sender=f"{ROOM}/alice", to=ALICE, status_codes=[110])
    again = await comm.sent()
    assert (again["body"], again["id"]) == ("two", two["id"])
    assert await _cursor_reaches(1) == 1
    assert first.envelope["seq"] == 1
    await comm.messages(_said("alice", "two", two["id"]))
    assert await _cursor_reaches(2) == 2
    # Nothing is sent again; the puppet of a sender who is not online leaves, done.
    left = await comm.sent()
    assert (left["type"], left["sender"], left.get("presence_type")) == ("xmpp.presence", ALICE, "unavailable")
    assert await comm.nothing_sent()


async def test_no_more_than_the_window_is_sent_before_the_room_echoes(
    comm: XmppCommunicator, settings: Any
) -> None:
    settings.XMPP_WINDOW = 2
    await _ready(comm)
    for text in ("one", "two", "three"):
        await database_sync_to_async(system_post)(text)
    said = [await comm.sent(), await comm.sent()]
    assert [(s["sender"], s["body"]) for s in said] == [(RELAY, "one"), (RELAY, "two")]
    await comm.nothing_sent()  # "three" waits for room in the window

    await comm.message(sender=f"{ROOM}/bridge", to=RELAY, id=said[0]["id"], origin_id=said[0]["id"],
                       body="one", stanza_id="room-1")
    assert (await comm.sent())["body"] == "three"  # read ahead with the others

    # Stored after that read: the next echo's pump reads again.
    await database_sync_to_async(system_post)("four")
    await comm.nothing_sent()
    await comm.message(sender=f"{ROOM}/bridge", to=RELAY, id=said[1]["id"], origin_id=said[1]["id"],
                       body="two", stanza_id="room-2")
    assert (await comm.sent())["body"] == "four"
    assert await _cursor_reaches(2) == 2


@pytest.mark.parametrize("window", [0, 50])
def test_a_window_the_rejoin_history_cannot_hold_is_refused(settings: Any, window: int) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from protocols.xmpp.config import edge_config

    settings.XMPP_WINDOW = window
    with pytest.raises(ImproperlyConfigured, match="XMPP_WINDOW"):
        edge_config()
