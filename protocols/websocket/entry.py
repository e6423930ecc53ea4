"""The `websocket` scope's application: the Origin check, sign-in and routing, then the consumer.

These were four ASGI middlewares (OriginCheck, the session and the token
sign-in, Channels' URLRouter) plus `as_asgi`'s wrapper. Each stays on the
stack, its coroutine frame and often its own copy of the scope, for as long as
the socket lives, though all of them only look at the handshake: about 2 KiB of
an idle socket (`python -m benchmarks.idle_heap`). Here they are steps run one
after another on one copy of the scope, and only this frame stays.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.security.websocket import WebsocketDenier
from django.urls import URLPattern

from protocols.websocket.auth import session_sign_in, token_sign_in
from protocols.websocket.security import OriginPolicy

logger = logging.getLogger(__name__)


class WebSocketEntry:
    """`routes` are `re_path`/`path` entries whose view is a consumer's `as_asgi()`; the
    last should match anything (an unknown path gets a clean refusal, not a 500)."""

    def __init__(self, routes: list[URLPattern], policy: OriginPolicy) -> None:
        self.routes = routes
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        why = self.policy.refusal(scope)
        if why is not None:
            logger.warning("refused a WebSocket handshake to %s: %s", scope.get("path"), why)
            await WebsocketDenier()(scope, receive, send)
            return
        scope = dict(scope)  # the server's own is left as it was
        await session_sign_in(scope)
        await token_sign_in(scope)
        app = self._route(scope)
        # A consumer class is called directly: as_asgi's wrapper would stay on the stack too.
        consumer_class = getattr(app, "consumer_class", None)
        if consumer_class is not None:
            await consumer_class(**app.consumer_initkwargs)(scope, receive, send)
        else:
            await app(scope, receive, send)

    def _route(self, scope: dict[str, Any]) -> Any:
        """As Channels' URLRouter does: the first route matching the path (less `root_path`,
        and its leading `/`) sets `path_remaining` and `url_route`."""
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path):]
        path = path.lstrip("/")
        for route in self.routes:
            match = route.pattern.match(path)
            if match:
                remaining, args, kwargs = match
                scope["path_remaining"] = remaining
                scope["url_route"] = {"args": args, "kwargs": {**kwargs, **route.default_args}}
                return route.callback
        raise ValueError(f"No route found for path {path!r}.")
