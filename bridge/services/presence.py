"""Who is in a room right now, across processes: one row per live connection."""

from __future__ import annotations

from datetime import timedelta

from asgiref.sync import async_to_sync
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from bridge import layer
from bridge.models import Identity, Presence, Room
from bridge.names import room_group


def _live() -> Q:
    return Q(expires__isnull=True) | Q(expires__gt=timezone.now())


def presence_join(
    *, room: Room, identity: Identity, connection: str, ttl: timedelta | None = None
) -> bool:
    """Record a connection; True when it is the identity's first in the room (now online).

    With `ttl`, the row expires unless `presence_renew` is called before then.
    """
    expires = timezone.now() + ttl if ttl is not None else None
    with transaction.atomic():
        others = Presence.objects.filter(_live(), room=room, identity=identity).exists()
        try:
            with transaction.atomic():
                Presence.objects.create(
                    room=room, identity=identity, connection=connection, expires=expires
                )
        except IntegrityError:
            return False
    return not others


def presence_renew(*, connection: str, ttl: timedelta) -> int:
    """A live connection's heartbeat: push its rows' expiry forward."""
    return presence_renew_many(connections=[connection], ttl=ttl)


def presence_renew_many(*, connections: list[str], ttl: timedelta) -> int:
    """One server's heartbeat for all its live connections, in one UPDATE."""
    return Presence.objects.filter(connection__in=connections).update(
        expires=timezone.now() + ttl
    )


def presence_expire() -> list[tuple[str, Identity]]:
    """Drop rows whose process stopped renewing them; (room slug, identity) now offline."""
    gone: list[tuple[str, Identity]] = []
    with transaction.atomic():
        expired = list(
            Presence.objects.select_related("room", "identity").filter(expires__lte=timezone.now())
        )
        Presence.objects.filter(pk__in=[row.pk for row in expired]).delete()
        for row in expired:
            still = Presence.objects.filter(_live(), room=row.room, identity=row.identity).exists()
            if not still and (row.room.slug, row.identity) not in gone:
                gone.append((row.room.slug, row.identity))
    return gone


def presence_leave(*, room: Room, connection: str) -> Identity | None:
    """Forget a connection; returns the identity when it was its last one (now offline)."""
    with transaction.atomic():
        row = Presence.objects.select_related("identity").filter(
            room=room, connection=connection
        ).first()
        if row is None:
            return None
        row.delete()
        if Presence.objects.filter(_live(), room=room, identity=row.identity).exists():
            return None
        return row.identity


def presence_list(*, room: Room) -> list[Identity]:
    ids = Presence.objects.filter(_live(), room=room).values("identity")
    return list(Identity.objects.filter(pk__in=ids).order_by("kind", "name"))


def presence_sweep() -> int:
    """Expire dead connections and tell the rooms who went offline (run by the reconciler)."""
    gone = presence_expire()
    for slug, identity in gone:
        async_to_sync(layer.group_send)(
            room_group(slug),
            {"type": "room.presence", "who": identity.as_sender(), "state": "offline",
             "origin": "system", "room": slug},
        )
    return len(gone)
