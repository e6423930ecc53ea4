"""Rooms, senders' identities, messages, API tokens and durable background tasks."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from bridge.names import device_id_validator, room_slug_validator

ROOM_COUNTERS = ("last_seq", "message_count", "last_message_at", "senders_24h")


class Room(models.Model):
    slug = models.CharField(max_length=64, unique=True, validators=[room_slug_validator])
    title = models.CharField(max_length=200, blank=True)
    private = models.BooleanField(
        default=False,
        help_text="Private rooms are read and written only by their members (see Room members).",
    )
    created = models.DateTimeField(auto_now_add=True)
    # The last seq handed out; bumped under the row lock in the same transaction as the message.
    last_seq = models.BigIntegerField(default=0, editable=False)
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Delete messages older than this; empty keeps them."
    )
    # Kept up to date by the room_stats task, shown on the room list.
    message_count = models.BigIntegerField(default=0, editable=False)
    last_message_at = models.DateTimeField(null=True, blank=True, editable=False)
    senders_24h = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Saving an existing room never writes its counters back: `last_seq` and the
        statistics change under their own updates, and a full save of a stale copy
        (the admin's form) would move `last_seq` back and break every later post."""
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in ROOM_COUNTERS
            ]
        super().save(*args, **kwargs)

    @property
    def display_title(self) -> str:
        return self.title or self.slug


class RoomMember(models.Model):
    """Who belongs to a private room: a Django user, a group of users, or an XMPP address.

    Devices belong to rooms through `Device.post_rooms` / `Device.listen_rooms`
    (one place for a device's rooms); `bridge.access` reads both. A JID member
    may name the Django user behind it, where known. Admins of a room manage
    its members over the API.
    """

    class Role(models.TextChoices):
        MEMBER = "member"
        ADMIN = "admin"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="room_memberships",
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE,
        related_name="room_memberships",
    )
    jid = models.CharField(
        max_length=320, blank=True,
        help_text="A bare XMPP address (user@domain), lower case. With 'user' set: that user's JID.",
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["room", "id"]
        constraints = [
            # A user, a group, or a JID alone; a user may carry its JID.
            models.CheckConstraint(
                condition=(
                    Q(user__isnull=False, group__isnull=True)
                    | Q(user__isnull=True, group__isnull=False, jid="")
                    | Q(user__isnull=True, group__isnull=True) & ~Q(jid="")
                ),
                name="roommember_one_kind",
            ),
            models.UniqueConstraint(
                fields=["room", "user"], condition=Q(user__isnull=False), name="roommember_room_user"
            ),
            models.UniqueConstraint(
                fields=["room", "group"], condition=Q(group__isnull=False),
                name="roommember_room_group",
            ),
            models.UniqueConstraint(
                fields=["room", "jid"], condition=~Q(jid=""), name="roommember_room_jid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}: {self.label}"

    @property
    def label(self) -> str:
        if self.user_id is not None:
            return f"user:{self.user}" + (f" ({self.jid})" if self.jid else "")
        if self.group_id is not None:
            return f"group:{self.group}"
        return f"jid:{self.jid}"


class Identity(models.Model):
    """Who speaks: a web user, an MQTT device, an XMPP occupant, or the system."""

    class Kind(models.TextChoices):
        USER = "user"
        DEVICE = "device"
        XMPP = "xmpp"
        SYSTEM = "system"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=128)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="identities",
        help_text="The Django user behind this identity, where known.",
    )
    jid = models.CharField(max_length=320, blank=True, help_text="Real JID of an XMPP occupant.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="identity_kind_name")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def as_sender(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


class Message(models.Model):
    class Origin(models.TextChoices):
        WEB = "web"
        API = "api"
        MQTT = "mqtt"
        XMPP = "xmpp"
        SYSTEM = "system"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    origin = models.CharField(max_length=16, choices=Origin.choices)
    sender = models.ForeignKey(Identity, on_delete=models.PROTECT, related_name="messages")
    text = models.TextField(blank=True)
    data = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(db_index=True)
    # Scoped to the sender by the service ("<kind>:<name>:<client key>").
    idempotency_key = models.CharField(max_length=300, null=True, blank=True, editable=False)

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq"),
            models.UniqueConstraint(
                fields=["room", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="message_room_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq}"


def _token_key() -> str:
    """Kept for migration 0001, which names it; new keys are made in ApiToken.save."""
    return secrets.token_hex(20)


def token_hash(key: str) -> str:
    """What is stored of a token: its SHA-256. Keys are 160 random bits, so a fast hash
    is enough (nothing to brute-force), and a lookup stays one indexed query."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """`Authorization: Token <key>` for scripts. Only the key's hash is stored: the key
    is shown once, when the token is created (`tokens add`, the admin)."""

    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=8, editable=False, help_text="The key's first characters.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.DateTimeField(
        null=True, blank=True, help_text="Set: the token no longer works (and its sockets close)."
    )
    # The clear key: only on the instance that created it, never stored.
    key: str | None = None

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.key_hash:
            self.key = _token_key()
            self.key_hash = token_hash(self.key)
            self.prefix = self.key[:8]
        super().save(*args, **kwargs)

    def __str__(self) -> str:
        return f"{self.user} {self.name or self.prefix}"


class Presence(models.Model):
    """One row per live connection of a sender in a room, so presence works across processes."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="presences")
    identity = models.ForeignKey(Identity, on_delete=models.CASCADE, related_name="presences")
    connection = models.CharField(max_length=200, help_text="Channel name or edge connection id.")
    since = models.DateTimeField(auto_now_add=True)
    # Connections held by a server process (WebSocket) renew this while alive, so a
    # process that died without saying goodbye does not leave its users online.
    # Null: no expiry (a device's presence follows its retained status and Last Will).
    expires = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "connection"], name="presence_room_connection")
        ]


class Task(models.Model):
    """Work that must happen: written in the same transaction as its cause.

    A channel-layer message only wakes a worker; a reconciler finds what is due
    if a wake-up is lost or no worker was running.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    name = models.CharField(max_length=64)
    key = models.CharField(max_length=200, help_text="At most one pending task per key.")
    args = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    due_at = models.DateTimeField(db_index=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    runs = models.PositiveIntegerField(default=0, help_text="Completed executions.")
    last_error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "due_at"], name="task_state_due")]
        constraints = [
            models.UniqueConstraint(
                fields=["key"], condition=Q(state="pending"), name="task_one_pending_per_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.key} ({self.state})"


class EdgeCursor(models.Model):
    """How far an outbound edge (MQTT publish, XMPP relay) has delivered a room's messages.

    The database is the source of truth: an edge that was away, or lost a
    channel-layer message, delivers everything after its cursor when it is back.
    Advanced by compare-and-set, so among several processes exactly one
    delivers a given range. An edge that must not advance before delivery is
    confirmed (MQTT: the broker's PUBACK) takes a lease on the room first
    (`lease_owner` until `lease_until`): one process delivers after `seq` at a
    time, and if it dies, the next holder delivers the range again.
    """

    edge = models.CharField(max_length=32)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="edge_cursors")
    seq = models.BigIntegerField(default=0)
    lease_owner = models.CharField(max_length=128, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["edge", "room"], name="edgecursor_edge_room")]

    def __str__(self) -> str:
        return f"{self.edge}:{self.room_id}@{self.seq}"


class Device(models.Model):
    """An MQTT device: who it is, which rooms it may post into, which it listens to."""

    device_id = models.CharField(max_length=64, unique=True, validators=[device_id_validator])
    identity = models.OneToOneField(Identity, on_delete=models.PROTECT, related_name="device")
    post_rooms = models.ManyToManyField(
        Room, blank=True, related_name="posting_devices", help_text="Rooms it may post into."
    )
    listen_rooms = models.ManyToManyField(
        Room, blank=True, related_name="listening_devices", help_text="Rooms it listens to."
    )
    operators = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="operated_devices",
        help_text="Users who may command it without sharing a room with it.",
    )
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, blank=True, editable=False)
    last_seen = models.DateTimeField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["device_id"]

    def __str__(self) -> str:
        return self.device_id


class Telemetry(models.Model):
    """One JSON object of readings a device published on `devices/<device>/telemetry`."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="telemetry")
    data = models.JSONField()
    received = models.DateTimeField(db_index=True)
    # The reading's own "id", when it has one: a redelivery stores nothing new.
    client_key = models.CharField(max_length=200, null=True, blank=True, editable=False)
    # The numeric readings, flattened ("env.temp": 21.5), as the edge validated them:
    # the worker rolls up only these, so nothing a device sends can poison a rollup.
    metrics = models.JSONField(default=dict, blank=True, editable=False)
    # Set in the transaction that adds this reading to its rollups (exactly once).
    rolled_up = models.BooleanField(default=False, editable=False)

    class Meta:
        verbose_name_plural = "telemetry"
        ordering = ["device", "received"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "client_key"],
                condition=Q(client_key__isnull=False),
                name="telemetry_device_client_key",
            )
        ]
        indexes = [
            models.Index(fields=["id"], condition=Q(rolled_up=False), name="telemetry_pending"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}@{self.received:%Y-%m-%d %H:%M:%S}"


class DeviceCommand(models.Model):
    """A command for a device, from chat (`/cmd`) or the API; published once on MQTT."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    text = models.TextField()
    sender = models.ForeignKey(Identity, on_delete=models.PROTECT, related_name="device_commands")
    origin = models.CharField(max_length=16)
    # The chat message it came from, so a re-claimed range records it once.
    message = models.OneToOneField(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="device_command"
    )
    created = models.DateTimeField(auto_now_add=True)
    # Set by the one runmqtt process whose compare-and-set wins, just before it publishes.
    published_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["created"]
        indexes = [models.Index(fields=["published_at"], name="devicecommand_published")]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.text[:40]}"


# Telemetry rollups and alert rules live in their own module; imported here so Django finds them.
from bridge.models_telemetry import (  # noqa: E402
    AlertRule,
    AlertState,
    DeviceMetric,
    TelemetryRollup,
)

__all__ = [
    "AlertRule", "AlertState", "ApiToken", "Device", "DeviceCommand", "DeviceMetric", "EdgeCursor",
    "Identity", "Message", "Presence", "Room", "Task", "Telemetry", "TelemetryRollup",
]
