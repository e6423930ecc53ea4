"""Linking an XMPP account to a Django user, proven from both sides.

The user's own page shows a signed token; the user sends `link <token>` from
the XMPP account to the bridge's address. Only someone signed in as the user
and in control of the account can do both, so nobody can link an account that
is not theirs (a link also gives the account the user's room memberships).
Admins link directly (Identities in the admin: an `xmpp` identity with the JID
and the user).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing

from bridge.services.identities import identity_link_jid

SALT = "protocols.xmpp.link"
# Seconds a token shown on the page stays good.
TOKEN_AGE = 3600


class LinkRefused(Exception):
    """The token is not one this bridge issued, has expired, or names no active user."""


def link_token(*, user: AbstractBaseUser) -> str:
    return signing.dumps({"user": user.pk}, salt=SALT, compress=True)


def link_by_token(*, token: str, jid: str) -> AbstractBaseUser:
    """Link `jid` (the sender of the token, as the server vouches) to the token's user."""
    try:
        claim = signing.loads(token.strip(), salt=SALT, max_age=TOKEN_AGE)
    except signing.SignatureExpired as exc:
        raise LinkRefused("This link code has expired: reload your account page for a new one.") from exc
    except signing.BadSignature as exc:
        raise LinkRefused("This is not a link code from this bridge.") from exc
    user = get_user_model().objects.filter(pk=claim.get("user"), is_active=True).first()
    if user is None:
        raise LinkRefused("The account this code was made for no longer exists.")
    identity_link_jid(user=user, jid=jid)
    return user
