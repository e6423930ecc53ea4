from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import IntegrityError, transaction

from bridge.exceptions import AuthRequired
from bridge.models import Identity


def identity_get_or_create(*, kind: str, name: str, jid: str = "") -> Identity:
    """The identity for (kind, name), created on first use; safe under concurrent callers."""
    identity = Identity.objects.filter(kind=kind, name=name).first()
    if identity is not None:
        return identity
    try:
        with transaction.atomic():
            return Identity.objects.create(kind=kind, name=name, jid=jid)
    except IntegrityError:
        return Identity.objects.get(kind=kind, name=name)


def identity_for_user(user: AbstractBaseUser | AnonymousUser) -> Identity:
    """The `user` identity of a signed-in Django user."""
    if not user.is_authenticated:
        raise AuthRequired("Sign in to post messages.")
    name = user.get_username()
    identity = Identity.objects.filter(kind=Identity.Kind.USER, name=name).first()
    if identity is None:
        identity = identity_get_or_create(kind=Identity.Kind.USER, name=name)
    if identity.user_id != user.pk:
        Identity.objects.filter(pk=identity.pk).update(user=user.pk)
        identity.user_id = user.pk
    return identity


def system_identity() -> Identity:
    return identity_get_or_create(kind=Identity.Kind.SYSTEM, name="bridge")
