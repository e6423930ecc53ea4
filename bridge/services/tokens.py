"""API tokens: created (the key shown once), revoked. Revocation is announced (bridge.signals)."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from bridge.exceptions import InvalidInput, NotFound
from bridge.models import ApiToken, token_hash
from bridge.selectors import user_get


def token_create(*, username: str, name: str = "") -> tuple[ApiToken, str]:
    """A new token for the user: (row, clear key). The key is not stored: show it now."""
    user: Any = user_get(username=username)
    token = ApiToken.objects.create(user=user, name=name)
    assert token.key is not None
    return token, token.key


def tokens_matching(ref: str) -> QuerySet[ApiToken]:
    """Tokens named by id, by the start of the key (as `tokens list` shows it), or by the key."""
    if not ref:
        raise InvalidInput("Name a token by its id or key prefix.", code="invalid_token_ref")
    if len(ref) > 8:
        query = Q(key_hash=token_hash(ref))
    else:
        query = Q(prefix__startswith=ref)
        if ref.isdigit():
            query |= Q(pk=int(ref))
    return ApiToken.objects.filter(query)


def token_find(*, ref: str) -> ApiToken:
    matches = list(tokens_matching(ref)[:2])
    if not matches:
        raise NotFound(f"No token {ref!r}.", code="unknown_token")
    if len(matches) > 1:
        raise InvalidInput(f"{ref!r} names several tokens: use the id.", code="ambiguous_token")
    return matches[0]


def token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token: it fails at once, and sockets opened with it close (bridge.signals)."""
    if token.revoked is None:
        token.revoked = timezone.now()
        token.save(update_fields=["revoked"])
    return token
