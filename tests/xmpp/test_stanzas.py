"""Stanzas as a component receives them (namespace jabber:component:accept) to events."""

from __future__ import annotations

import pytest
from slixmpp import Iq, Message, Presence
from slixmpp.xmlstream import ET

from protocols.xmpp.stanzas import iq_event, message_event, presence_event, register_stanza_plugins

NS = "jabber:component:accept"
ERROR = ('<error type="cancel" by="lobby@conference.localhost">'
         '<conflict xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
         '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">Nickname in use</text></error>')


@pytest.fixture(autouse=True)
def _plugins() -> None:
    register_stanza_plugins()


def test_a_presence_errors_condition_is_the_servers() -> None:
    xml = ET.fromstring(f'<presence xmlns="{NS}" type="error" from="lobby@conference.localhost/demo" '
                        f'to="user~demo@bridge.localhost/bridge">{ERROR}</presence>')
    assert presence_event(Presence(xml=xml))["error_condition"] == "conflict"


def test_a_message_errors_condition_is_the_servers() -> None:
    xml = ET.fromstring(f'<message xmlns="{NS}" type="error" from="lobby@conference.localhost" '
                        f'to="bridge.localhost/bridge" id="bridge-1">{ERROR}</message>')
    assert message_event(Message(xml=xml))["error_condition"] == "conflict"


def test_an_owner_form_result_is_read_field_by_field() -> None:
    xml = ET.fromstring(
        f'<iq xmlns="{NS}" type="result" id="c1" from="lobby@conference.localhost" to="bridge.localhost/bridge">'
        '<query xmlns="http://jabber.org/protocol/muc#owner"><x xmlns="jabber:x:data" type="form">'
        '<field var="muc#roomconfig_persistentroom" type="boolean"><value>0</value></field>'
        '<field var="muc#roomconfig_whois" type="list-single"><value>moderators</value>'
        '<option><value>moderators</value></option><option><value>anyone</value></option></field>'
        '</x></query></iq>')
    event = iq_event(Iq(xml=xml))
    assert event["form"] == [
        {"var": "muc#roomconfig_persistentroom", "type": "boolean", "values": ["0"], "options": []},
        {"var": "muc#roomconfig_whois", "type": "list-single", "values": ["moderators"],
         "options": ["moderators", "anyone"]},
    ]


MAM_RESULT = (
    '<message xmlns="{ns}" from="{outer}" to="bridge.localhost/bridge" id="r1">'
    '<result xmlns="urn:xmpp:mam:2" queryid="q1" id="arch-7">'
    '<forwarded xmlns="urn:xmpp:forward:0">'
    '<delay xmlns="urn:xmpp:delay" stamp="2026-11-22T12:00:00Z"/>'
    '<message xmlns="jabber:client" type="groupchat" from="{inner}" id="bridge-abc">'
    '<body>one</body><origin-id xmlns="urn:xmpp:sid:0" id="bridge-abc"/></message>'
    '</forwarded></result></message>'
)


def test_the_rooms_archive_answer_is_read_as_the_archived_message() -> None:
    xml = ET.fromstring(MAM_RESULT.format(ns=NS, outer="lobby@conference.localhost",
                                          inner="lobby@conference.localhost/alice"))
    event = message_event(Message(xml=xml))
    assert (event["sender"], event["to"], event["message_type"], event["body"]) == (
        "lobby@conference.localhost/alice", "bridge.localhost/bridge", "groupchat", "one")
    assert event["origin_id"] == "bridge-abc" and event["delayed"] is True


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        # An occupant's private message wrapped as an archive answer.
        ("lobby@conference.localhost/mallory", "lobby@conference.localhost/alice"),
        # Another room's (or anyone's) message, said to be this room's archive.
        ("lobby@conference.localhost", "other@conference.localhost/alice"),
    ],
)
def test_an_archive_answer_not_from_the_room_about_itself_is_not_unwrapped(outer: str, inner: str) -> None:
    xml = ET.fromstring(MAM_RESULT.format(ns=NS, outer=outer, inner=inner))
    event = message_event(Message(xml=xml))
    assert event["sender"] == outer and event["origin_id"] == ""
