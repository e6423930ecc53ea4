"""The user's own XMPP page: the linked accounts, the code to link one, unlinking."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from bridge.selectors import linked_jids
from bridge.services.identities import identity_link_jid
from protocols.xmpp.linking import link_by_token

pytestmark = pytest.mark.django_db


def test_the_page_needs_a_user(client: Client) -> None:
    response = client.get("/accounts/xmpp/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_page_gives_a_code_that_links_and_lists_and_unlinks(client: Client, settings: Any) -> None:
    settings.XMPP_DOMAIN, settings.XMPP_COMPONENT_JID = "localhost", "bridge.localhost"
    settings.XMPP_COMPONENT_SECRET, settings.XMPP_SERVER_HOST = "s", "127.0.0.1"
    settings.XMPP_MUC_SERVICE = "conference.localhost"
    user = get_user_model().objects.create_user("fay", password="pw")
    client.force_login(user)
    page = client.get("/accounts/xmpp/").content.decode()
    assert "bridge.localhost" in page and "No XMPP account is linked" in page
    token = page.split('<pre class="link-code">link ', 1)[1].split("</pre>", 1)[0].strip()
    link_by_token(token=token, jid="Fay@localhost/phone")
    assert linked_jids(user=user) == ["fay@localhost"]
    assert "fay@localhost" in client.get("/accounts/xmpp/").content.decode()
    client.post("/accounts/xmpp/", {"jid": "fay@localhost"})
    assert linked_jids(user=user) == []


def test_only_the_users_own_links_are_undone(client: Client) -> None:
    owner = get_user_model().objects.create_user("gil", password="pw")
    other = get_user_model().objects.create_user("hal", password="pw")
    identity_link_jid(user=owner, jid="gil@localhost")
    client.force_login(other)
    client.post("/accounts/xmpp/", {"jid": "gil@localhost"})
    assert linked_jids(user=owner) == ["gil@localhost"]


def test_the_admin_lists_what_each_room_gives_the_bridge(client: Client) -> None:
    from bridge.services.rooms import room_create
    from protocols.xmpp.store import link_status

    room = room_create(slug="theirs")
    link_status(room_pk=room.pk, state="ready", affiliation="member",
                lacks=["ownership (affiliation member)"])
    client.force_login(get_user_model().objects.create_superuser("root", password="pw"))
    page = client.get("/admin/xmpp/roomlinkstatus/")
    assert page.status_code == 200
    assert "ownership (affiliation member)" in page.content.decode()
