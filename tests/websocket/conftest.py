from __future__ import annotations

from collections.abc import Callable

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore

from project.asgi import application

Connect = Callable[..., WebsocketCommunicator]


def _session_cookie(username: str) -> str:
    user = get_user_model().objects.create_user(username=username, password="pw")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


@pytest.fixture
def session_for() -> Callable[[str], object]:
    return database_sync_to_async(_session_cookie)


@pytest.fixture
def ws() -> Connect:
    """A communicator on the full ASGI stack (origin check, session auth, routing)."""

    def connect(
        path: str, *, cookie: str | None = None, origin: str = "http://localhost",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> WebsocketCommunicator:
        headers = [(b"host", b"localhost"), (b"origin", origin.encode()), *(headers or [])]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        return WebsocketCommunicator(application, path, headers=headers)

    return connect
