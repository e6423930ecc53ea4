from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.db import transaction

from bridge import layer
from bridge.exceptions import InvalidInput
from bridge.models import Room
from bridge.names import ROOMS_GROUP, is_room_slug

logger = logging.getLogger(__name__)


def room_create(*, slug: str, title: str = "", private: bool | None = None) -> Room:
    """Create a room, or update an existing one (provisioning is idempotent).

    `title` and `private` change an existing room only when given: running the
    same script again never turns a private room public.
    """
    if not is_room_slug(slug):
        raise InvalidInput(
            f"{slug!r} is not a room name: 1-64 of a-z 0-9 _ -, starting with a letter or digit.",
            code="invalid_room",
        )
    with transaction.atomic():
        room, created = Room.objects.get_or_create(
            slug=slug, defaults={"title": title, "private": bool(private)}
        )
        if created:
            transaction.on_commit(lambda: rooms_changed(slug=slug))
            return room
        changed = []
        if title and room.title != title:
            room.title = title
            changed.append("title")
        if private is not None and room.private != private:
            room.private = private
            changed.append("private")
        if changed:
            try:
                room.full_clean()
            except ValidationError as exc:
                raise InvalidInput(str(exc), code="invalid_room") from exc
            room.save(update_fields=changed)
            transaction.on_commit(lambda: rooms_changed(slug=slug))
    return room


def rooms_changed(*, slug: str) -> None:
    """Tell edges that bridge every room (XMPP) that a room appeared or changed.

    At most once, like every channel-layer message: the edges also resync
    periodically, so a lost announcement only delays a new room.
    """
    if not async_to_sync(layer.group_send)(ROOMS_GROUP, {"type": "rooms.changed", "room": slug}):
        # The room exists: the edges' resync finds it anyway.
        logger.info("could not announce room %s; edges will find it at their resync", slug)
