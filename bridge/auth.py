"""`Authorization: Token <key>` for the HTTP API, beside Django sessions."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

from bridge.exceptions import AuthRequired, Forbidden
from bridge.models import ApiToken


def _csrf_failure(request: HttpRequest, reason: str = "") -> None:
    raise Forbidden(f"CSRF check failed: {reason}", code="csrf_failed")


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> None:
        _csrf_failure(request, reason)


def api_user(request: HttpRequest) -> AbstractBaseUser | AnonymousUser:
    """The caller: a token's user, or the session's user (whose writes need a CSRF token)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "token" or not key.strip():
            raise AuthRequired("Use 'Authorization: Token <key>'.", code="invalid_token")
        token = ApiToken.objects.select_related("user").filter(key=key.strip()).first()
        if token is None or not token.user.is_active:
            raise AuthRequired("Unknown or inactive API token.", code="invalid_token")
        return token.user
    user = request.user
    if user.is_authenticated and request.method not in ("GET", "HEAD", "OPTIONS"):
        _CsrfCheck(lambda r: None).process_view(request, lambda r: None, (), {})  # type: ignore[arg-type,return-value]
    return user
