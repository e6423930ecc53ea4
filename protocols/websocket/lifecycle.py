"""The WebSocket connections this process holds, so that stopping closes them with 1001.

uvicorn, stopping, fails every open WebSocket with 1012 and no reason; a
browser should instead hear 1001 ("going away") from the application and
reconnect to another replica at once. `GracefulServer` (runweb, runbridge)
calls `close_all` before uvicorn's own shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

import uvicorn

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
FLUSH_SECONDS = 0.2  # for the close frames to leave before uvicorn cuts the connections


class Closable(Protocol):
    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None: ...


OPEN: weakref.WeakSet[Any] = weakref.WeakSet()


def track(consumer: Closable) -> None:
    OPEN.add(consumer)


def untrack(consumer: Closable) -> None:
    OPEN.discard(consumer)


async def close_all(code: int = GOING_AWAY) -> int:
    """Close every tracked connection with `code`; how many there were."""
    consumers = list(OPEN)
    OPEN.clear()
    results = await asyncio.gather(
        *(consumer.close(code=code, reason="server stopping") for consumer in consumers),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        logger.warning("%s of %s WebSockets could not be closed cleanly: %s",
                       len(failed), len(consumers), failed[0])
    if consumers:
        await asyncio.sleep(FLUSH_SECONDS)
    return len(consumers)


class GracefulServer(uvicorn.Server):
    """uvicorn that says goodbye (1001) to its WebSockets before stopping."""

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        closed = await close_all()
        logger.info("stopping: closed %s WebSocket(s) with %s", closed, GOING_AWAY)
        await super().shutdown(sockets=sockets)
