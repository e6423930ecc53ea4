"""The task worker inside `runbridge`."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer
from django.conf import settings

from bridge.embedded import EmbeddedContext
from bridge.tasks.worker import BridgeWorker


async def serve(ctx: EmbeddedContext) -> None:
    from project.asgi import application

    worker = BridgeWorker(
        application=application,
        channels=[settings.BRIDGE_TASKS_CHANNEL, settings.BRIDGE_TELEMETRY_CHANNEL],
        channel_layer=get_channel_layer(),
        own_sigterm=False,
    )
    ctx.banner.append(
        f"worker: listening on channels {settings.BRIDGE_TASKS_CHANNEL}, "
        f"{settings.BRIDGE_TELEMETRY_CHANNEL}"
    )
    ctx.started()
    checker = asyncio.create_task(worker.application_checker(), name="worker.application_checker")
    try:
        await worker.handle()
    finally:
        # The checker never ends by itself: without this, runbridge would wait on it forever.
        checker.cancel()
        await asyncio.gather(checker, return_exceptions=True)
