"""Who is calling: `Authorization: Token <key>` beside Django sessions, and whether a
credential a socket opened with still holds."""

from __future__ import annotations

from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from bridge.exceptions import AuthRequired, Forbidden
from bridge.models import ApiToken, token_hash


def _csrf_failure(request: HttpRequest, reason: str = "") -> None:
    raise Forbidden(f"CSRF check failed: {reason}", code="csrf_failed")


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> None:
        _csrf_failure(request, reason)


# How stale `last_used` may get: one write a minute per token, not one per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def token_authenticate(key: str) -> ApiToken:
    """The live token with this key (its user active), its `last_used` stamped; else AuthRequired."""
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=token_hash(key), revoked__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        raise AuthRequired("Unknown, revoked or inactive API token.", code="invalid_token")
    now = timezone.now()
    if token.last_used is None or now - token.last_used > LAST_USED_RESOLUTION:
        # update(), not save(): stamping is not a change anyone must be told about.
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    return token


def token_live(token_id: int) -> bool:
    """Is this token still usable (not revoked, not deleted, its user active)?"""
    return ApiToken.objects.filter(
        pk=token_id, revoked__isnull=True, user__is_active=True
    ).exists()


def session_live(session_key: str | None, user: AbstractBaseUser) -> bool:
    """Does this session still sign in this user, as Django's own check would say?

    False after a logout (session gone), a password change elsewhere (the hash
    in the session no longer matches), or a deactivation.
    """
    if not session_key:
        return False
    fresh = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
    if fresh is None:
        return False
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    if session.get(SESSION_KEY) != str(fresh.pk):
        return False
    stored = session.get(HASH_SESSION_KEY) or ""
    return constant_time_compare(stored, fresh.get_session_auth_hash())


def api_user(request: HttpRequest) -> AbstractBaseUser | AnonymousUser:
    """The caller: a token's user, or the session's user (whose writes need a CSRF token)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "token" or not key.strip():
            raise AuthRequired("Use 'Authorization: Token <key>'.", code="invalid_token")
        return token_authenticate(key.strip()).user
    user = request.user
    if user.is_authenticated and request.method not in ("GET", "HEAD", "OPTIONS"):
        _CsrfCheck(lambda r: None).process_view(request, lambda r: None, (), {})  # type: ignore[arg-type,return-value]
    return user
