"""The room list says when the last message was, the way people say it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from bridge.models import Room
from bridge.services.rooms import room_create
from bridge.templatetags.bridge_time import ago


def test_ago_reads_naturally() -> None:
    now = timezone.now()
    assert ago(now - timedelta(seconds=5), now) == "just now"
    assert ago(now - timedelta(minutes=3, seconds=20), now) == "3 minutes ago"
    assert ago(now - timedelta(hours=1), now) == "1 hour ago"
    assert ago(now - timedelta(days=2, hours=3), now) == "2 days ago"
    assert ago(None) == ""


@pytest.mark.django_db
def test_the_room_list_shows_the_last_message_as_time_ago(client: Client) -> None:
    room_create(slug="lobby")
    Room.objects.filter(slug="lobby").update(
        message_count=4, last_message_at=timezone.now() - timedelta(minutes=3)
    )
    page = client.get("/").content.decode()
    assert "4 messages, last <time" in page and ">3 minutes ago</time>" in page
