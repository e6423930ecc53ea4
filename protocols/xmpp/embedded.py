"""The XMPP protocol server inside `runbridge` (the XMPP server itself stays separate)."""

from __future__ import annotations

import asyncio

from bridge.embedded import EmbeddedContext
from protocols.xmpp.config import HOW_TO_ENABLE, xmpp_config
from protocols.xmpp.server import XmppServer


async def serve(ctx: EmbeddedContext) -> None:
    config = xmpp_config()
    if config is None:
        ctx.banner.append(HOW_TO_ENABLE)
        ctx.started()
        # The first service to return stops runbridge: an edge that is off just waits.
        await asyncio.Event().wait()
        return
    from project.asgi import application

    ctx.banner.append(
        f"xmpp: component {config.component} on {config.host}:{config.port}, "
        f"rooms on {config.muc_service}"
    )
    ctx.started()  # it connects (and reconnects) by itself from here
    await XmppServer(application=application, config=config).run()
