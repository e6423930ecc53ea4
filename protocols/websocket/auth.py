"""`Authorization: Token <key>` on the WebSocket handshake, for scripts (browsers use the session).

Sits inside Channels' AuthMiddlewareStack: a token, when sent, replaces the
session's user and is remembered in the scope (`api_token`) so the consumer
can tell, later, that it was revoked. A bad token is not silently anonymous:
the consumer refuses the socket with the reason (`auth_error`).
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser

from bridge.auth import token_authenticate
from bridge.exceptions import AuthRequired


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
