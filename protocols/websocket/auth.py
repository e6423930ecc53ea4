"""Who opens a WebSocket: the session cookie (browsers), or `Authorization: Token <key>` (scripts).

`SessionAuthMiddleware` does what Channels' AuthMiddlewareStack does for a
WebSocket, in one step: the cookies, the session, and its user (Channels'
`get_user`: the session's user with its auth hash verified, else anonymous).
Channels' stack is three middlewares, each copying the scope and each staying
on the stack (its coroutine frame) as long as the socket lives, and its
session wrapper sees every frame sent although it only acts on HTTP responses
(a WebSocket's session is never saved by it): a few KiB per idle socket, and a
sixth of a busy fan-out's time in a py-spy profile.

`TokenAuthMiddleware` sits inside it: a token, when sent, replaces the
session's user and is remembered in the scope (`api_token`) so the consumer
can tell, later, that it was revoked. A bad token is not silently anonymous:
the consumer refuses the socket with the reason (`auth_error`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from bridge.auth import token_authenticate
from bridge.exceptions import AuthRequired


class SessionAuthMiddleware:
    """Sets `cookies`, `session` and `user` in a WebSocket scope (see the module's docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore
        self.cookie_name = settings.SESSION_COOKIE_NAME

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin-1"))
                break
        session = self.session_store(cookies.get(self.cookie_name))
        scope = {**scope, "cookies": cookies, "session": session}
        scope["user"] = await get_user(scope)
        return await self.app(scope, receive, send)


class TokenAuthMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        header = dict(scope.get("headers", [])).get(b"authorization")
        if header is None:
            return await self.app(scope, receive, send)
        scheme, _, key = header.decode("latin-1").partition(" ")
        extra: dict[str, Any]
        try:
            if scheme.lower() != "token" or not key.strip():
                raise AuthRequired("Use 'Authorization: Token <key>'.", code="invalid_token")
            token = await database_sync_to_async(token_authenticate)(key.strip())
            extra = {"user": token.user, "api_token": token.pk}
        except AuthRequired as exc:
            extra = {"user": AnonymousUser(), "auth_error": exc}
        return await self.app({**scope, **extra}, receive, send)
