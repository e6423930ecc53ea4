from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import IntegrityError, transaction

from bridge.exceptions import AuthRequired
from bridge.models import Device, Identity


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


def _bare(jid: str) -> str:
    return jid.partition("/")[0].strip().lower()


def _name_taken(name: str) -> bool:
    """Someone else goes by this name already: a web user, a device, another XMPP account."""
    return (
        Identity.objects.filter(name=name).exists()
        or get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: name}).exists()
        or Device.objects.filter(device_id=name).exists()
    )


def identity_for_jid(*, jid: str, nick: str) -> Identity:
    """Who speaks from an XMPP account: keyed by its bare JID, never by the nick it uses.

    A JID linked to a Django user (`identity_link_jid`) speaks as that user's own
    identity, the same sender as on the web. Otherwise the account has one `xmpp`
    identity, named after the first nick it was seen with (or "nick (jid)" when that
    name belongs to someone else): a later nick change keeps it, and another account
    taking the nick gets an identity of its own.
    """
    bare = _bare(jid)
    if not bare:
        raise ValueError("identity_for_jid needs a JID")
    identity = Identity.objects.filter(kind=Identity.Kind.XMPP, jid=bare).select_related("user").order_by("pk").first()
    if identity is None:
        name = nick[:128]
        if not nick or _name_taken(name):
            name = f"{nick} ({bare})"[:128] if nick else bare[:128]
        try:
            with transaction.atomic():
                identity = Identity.objects.create(kind=Identity.Kind.XMPP, name=name, jid=bare)
        except IntegrityError:  # a concurrent first message of the same account, or a name race
            found = Identity.objects.filter(kind=Identity.Kind.XMPP, jid=bare).order_by("pk").first()
            if found is None:
                raise
            identity = found
    user = identity.user
    if user is not None and user.is_active:
        return identity_for_user(user)
    return identity


def identity_link_jid(*, user: AbstractBaseUser, jid: str) -> Identity:
    """From now on, messages from `jid` are `user`'s (and its room memberships apply to it)."""
    bare = _bare(jid)
    if "@" not in bare or bare.startswith("@") or bare.endswith("@"):
        raise ValueError(f"not a bare JID: {jid!r}")
    with transaction.atomic():
        identity = Identity.objects.select_for_update().filter(kind=Identity.Kind.XMPP, jid=bare).order_by("pk").first()
        if identity is None:
            name = bare[:128]
            identity = Identity.objects.create(kind=Identity.Kind.XMPP, name=name, jid=bare, user_id=user.pk)
        else:
            Identity.objects.filter(pk=identity.pk).update(user=user.pk)
            identity.user_id = user.pk
    return identity


def identity_unlink_jid(*, user: AbstractBaseUser, jid: str) -> bool:
    """The JID speaks for itself again; False when it was not linked to `user`."""
    return bool(Identity.objects.filter(kind=Identity.Kind.XMPP, jid=_bare(jid), user=user.pk).update(user=None))

