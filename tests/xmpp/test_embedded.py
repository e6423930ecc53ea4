"""`runbridge`'s XMPP service when XMPP is not configured: one banner line, and it keeps running."""

from __future__ import annotations

import asyncio

import pytest

from bridge.embedded import EmbeddedContext
from protocols.xmpp.config import xmpp_config
from protocols.xmpp.embedded import serve


async def test_without_xmpp_settings_it_says_how_to_turn_it_on_and_waits() -> None:
    assert xmpp_config() is None  # the test settings remove every XMPP_* variable
    ctx = EmbeddedContext(host="127.0.0.1", port=0, mqtt_port=0)
    task = asyncio.create_task(serve(ctx))
    done, _ = await asyncio.wait([task], timeout=0.3)
    assert not done  # the first embedded service that returns would stop runbridge
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(ctx.banner) == 1
    assert ctx.banner[0].startswith("xmpp: off (set XMPP_DOMAIN")
