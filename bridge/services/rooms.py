from __future__ import annotations

from django.core.exceptions import ValidationError

from bridge.exceptions import InvalidInput
from bridge.models import Room
from bridge.names import is_room_slug


def room_create(*, slug: str, title: str = "", private: bool = False) -> Room:
    """Create a room, or update title/privacy of an existing one (provisioning is idempotent)."""
    if not is_room_slug(slug):
        raise InvalidInput(
            f"{slug!r} is not a room name: 1-64 of a-z 0-9 _ -, starting with a letter or digit.",
            code="invalid_room",
        )
    room, created = Room.objects.get_or_create(slug=slug, defaults={"title": title, "private": private})
    if not created and (room.title != title and title or room.private != private):
        room.title = title or room.title
        room.private = private
        try:
            room.full_clean()
        except ValidationError as exc:
            raise InvalidInput(str(exc), code="invalid_room") from exc
        room.save(update_fields=["title", "private"])
    return room
