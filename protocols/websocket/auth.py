"""Who opens a WebSocket: the session cookie (browsers), or `Authorization: Token <key>` (scripts).

`session_sign_in` does what Channels' AuthMiddlewareStack does for a
WebSocket, in one step (`protocols/websocket/entry.py` runs it on its copy of
the scope): the cookies, the session, and its user (Channels' `get_user`: the
session's user with its auth hash verified, else anonymous).
Channels' stack is three middlewares, each copying the scope and each staying
on the stack (its coroutine frame) as long as the socket lives, and its
session wrapper sees every frame sent although it only acts on HTTP responses
(a WebSocket's session is never saved by it): a few KiB per idle socket, and a
sixth of a busy fan-out's time in a py-spy profile.

`token_sign_in` runs after it: a token, when sent, replaces the
session's user and is remembered in the scope (`api_token`) so the consumer
can tell, later, that it was revoked. A bad token is not silently anonymous:
the consumer refuses the socket with the reason (`auth_error`).
"""

from __future__ import annotations

import functools
from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from bridge.auth import token_authenticate
from bridge.exceptions import AuthRequired
from bridge.probes import DATABASE_AWAY, database_unavailable


@functools.cache
def _session_store() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore


async def session_sign_in(scope: dict[str, Any]) -> None:
    """Sets `cookies`, `session` and `user` in a WebSocket scope (see the module's docstring)."""
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookies = parse_cookie(value.decode("latin-1"))
            break
    scope["cookies"] = cookies
    scope["session"] = _session_store()(cookies.get(settings.SESSION_COOKIE_NAME))
    try:
        scope["user"] = await get_user(scope)
    except DATABASE_AWAY as exc:  # the consumer refuses the socket: try again shortly
        scope.update(user=AnonymousUser(), auth_error=database_unavailable(exc))


async def token_sign_in(scope: dict[str, Any]) -> None:
    """With an `Authorization` header: `user` and `api_token` from the token, or an anonymous
    `user` and `auth_error` (see the module's docstring)."""
    header = dict(scope.get("headers", [])).get(b"authorization")
    if header is None:
        return
    scheme, _, key = header.decode("latin-1").partition(" ")
    try:
        if scheme.lower() != "token" or not key.strip():
            raise AuthRequired("Use 'Authorization: Token <key>'.", code="invalid_token")
        token = await database_sync_to_async(token_authenticate)(key.strip())
        scope.update(user=token.user, api_token=token.pk)
    except AuthRequired as exc:
        scope.update(user=AnonymousUser(), auth_error=exc)
    except DATABASE_AWAY as exc:
        scope.update(user=AnonymousUser(), auth_error=database_unavailable(exc))
