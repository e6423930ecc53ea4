"""Who is in a room right now, across processes: one row per live connection."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from bridge.models import Identity, Presence, Room


def presence_join(*, room: Room, identity: Identity, connection: str) -> bool:
    """Record a connection; True when it is the identity's first in the room (now online)."""
    with transaction.atomic():
        others = Presence.objects.filter(room=room, identity=identity).exists()
        try:
            with transaction.atomic():
                Presence.objects.create(room=room, identity=identity, connection=connection)
        except IntegrityError:
            return False
    return not others


def presence_leave(*, room: Room, connection: str) -> Identity | None:
    """Forget a connection; returns the identity when it was its last one (now offline)."""
    with transaction.atomic():
        row = Presence.objects.select_related("identity").filter(
            room=room, connection=connection
        ).first()
        if row is None:
            return None
        row.delete()
        if Presence.objects.filter(room=room, identity=row.identity).exists():
            return None
        return row.identity


def presence_list(*, room: Room) -> list[Identity]:
    ids = Presence.objects.filter(room=room).values("identity")
    return list(Identity.objects.filter(pk__in=ids).order_by("kind", "name"))
