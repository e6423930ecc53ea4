"""Live checks of the process's dependencies, reported into `HEALTH`.

`/readyz` (web) and the ops endpoint of the other processes run them on every
request, so readiness is measured, not remembered: a Redis that came back shows
as recovered on the next probe even if nothing else touched it. Each probe is
bounded by PROBE_TIMEOUT so a frozen dependency makes a probe fail, not hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection

from bridge.exceptions import Unavailable
from bridge.health import HEALTH, Health

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0  # seconds: a health check answers well within a load balancer's timeout

DATABASE = "database"
CHANNEL_LAYER = "channel_layer"

# What the database driver raises when the server is away (an outage, a restart), as
# opposed to a bug of the request (IntegrityError, DataError: those are not retried).
DATABASE_AWAY = (OperationalError, InterfaceError)
DATABASE_AWAY_DETAIL = "The database is unavailable; try again shortly."


def database_unavailable(exc: BaseException) -> Unavailable:
    """The edges' refusal while the database is away; HEALTH logs the outage once."""
    HEALTH.failing(DATABASE, exc)
    logger.info("refused: the database is unavailable: %s", exc)
    return Unavailable(DATABASE_AWAY_DETAIL)


@contextlib.contextmanager
def refused_while_database_away() -> Iterator[None]:
    """Around an edge's work for one request or frame: the database away becomes the
    edge's `unavailable` refusal (a BridgeError), not a crash of the connection."""
    try:
        yield
    except DATABASE_AWAY as exc:
        raise database_unavailable(exc) from exc


def probe_database(health: Health = HEALTH) -> bool:
    """Run in a database thread (or a sync view): SELECT 1 on the default connection."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        health.failing(DATABASE, exc)
        # A broken connection stays broken: drop it so the next probe opens a new one.
        connection.close_if_unusable_or_obsolete()
        return False
    health.ok(DATABASE)
    return True


def probe_channel_layer(health: Health = HEALTH) -> bool:
    """PING the channel layer's Redis with a short timeout; no Redis configured: nothing to check."""
    if not settings.REDIS_URL:
        health.forget(CHANNEL_LAYER)  # the in-memory layer: nothing that can go away
        return True
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        health.failing(CHANNEL_LAYER, exc)
        return False
    finally:
        client.close()
    health.ok(CHANNEL_LAYER)
    return True


def _probe_database_once(health: Health) -> None:
    # A thread of its own with a connection of its own, closed after: the process's
    # database thread may be busy with a long batch, which is not a failure.
    try:
        probe_database(health)
    finally:
        connection.close()


async def aprobe_all(health: Health = HEALTH) -> None:
    """Both probes, from an event loop, without blocking it."""
    try:
        await asyncio.wait_for(asyncio.to_thread(_probe_database_once, health), PROBE_TIMEOUT * 2)
    except TimeoutError:
        health.failing(DATABASE, f"no answer within {PROBE_TIMEOUT * 2:.0f} s")
    await asyncio.to_thread(probe_channel_layer, health)
