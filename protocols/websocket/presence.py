"""One presence heartbeat per web process: every live connection's rows renewed in one UPDATE.

A connection registers when its user joins a room's presence and unregisters
when it leaves; the renewal runs under the process's `Supervisor` (a failed
UPDATE is logged once, retried with back-off, and shown in /readyz as
`loop:web.presence`), so a database blip never silently stops renewals, and a
crashed consumer cannot leave a renewal running after it.
"""

from __future__ import annotations

import asyncio
import weakref
from datetime import timedelta

from channels.db import database_sync_to_async
from django.conf import settings

from bridge.services.presence import presence_renew_many
from bridge.supervisor import Supervisor


class PresenceRenewer:
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PresenceRenewer] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.connections: set[str] = set()
        self.supervisor = Supervisor("web")
        interval = settings.BRIDGE_PRESENCE_TTL / 3
        self.supervisor.every("presence", interval, self.renew, first_delay=interval)

    @classmethod
    def current(cls) -> PresenceRenewer:
        """This event loop's renewer, started on first use."""
        loop = asyncio.get_running_loop()
        renewer = cls._by_loop.get(loop)
        if renewer is None:
            renewer = cls._by_loop[loop] = cls()
        return renewer

    @classmethod
    async def stop_all(cls) -> None:
        """For tests and shutdown: stop this loop's renewer."""
        renewer = cls._by_loop.pop(asyncio.get_running_loop(), None)
        if renewer is not None:
            await renewer.supervisor.stop()

    async def renew(self) -> None:
        if self.connections:
            ttl = timedelta(seconds=settings.BRIDGE_PRESENCE_TTL)
            await database_sync_to_async(presence_renew_many)(
                connections=sorted(self.connections), ttl=ttl
            )
