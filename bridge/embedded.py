"""What `runbridge` runs in one process: each edge contributes an async service.

An edge's service is `async def serve(ctx: EmbeddedContext) -> None`, named in
the BRIDGE_EMBEDDED_SERVICES setting. It runs until cancelled; the first one
to return or fail stops the rest. The domain never imports an edge: the
setting composes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedContext:
    host: str
    port: int
    mqtt_port: int
    # Each service appends one line a person needs (an address, how to connect).
    banner: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    def started(self) -> None:
        """A service calls this once it serves (its port is bound, its broker is up).

        runbridge says it is running only when every service has, so a busy
        port is an error before, not after, the banner.
        """
        self.waiting -= 1
        if self.waiting <= 0:
            self.ready.set()


Service = Callable[[EmbeddedContext], Coroutine[Any, Any, None]]


def embedded_services() -> list[tuple[str, Service]]:
    return [(path, import_string(path)) for path in settings.BRIDGE_EMBEDDED_SERVICES]


async def run_embedded(ctx: EmbeddedContext, on_ready: Callable[[], None]) -> None:
    """Run every service; when one ends (Ctrl-C ends the web server), stop the others."""
    services = embedded_services()
    ctx.waiting = len(services)
    tasks: dict[asyncio.Task[None], str] = {
        asyncio.create_task(service(ctx), name=path): path for path, service in services
    }
    ready_waiter = asyncio.create_task(ctx.ready.wait())
    try:
        done, _ = await asyncio.wait([*tasks, ready_waiter], return_when=asyncio.FIRST_COMPLETED)
        if ready_waiter in done and not done & tasks.keys():
            on_ready()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        ready_waiter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
