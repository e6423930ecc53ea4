"""The contract's message envelope: the one JSON shape every edge speaks."""

from __future__ import annotations

from typing import Any, TypedDict

from bridge.models import Message


class Sender(TypedDict):
    kind: str
    name: str


class Envelope(TypedDict):
    id: str
    seq: int
    room: str
    origin: str
    sender: Sender
    text: str
    data: dict[str, Any] | None
    created: str


def message_envelope(message: Message, *, room_slug: str | None = None) -> Envelope:
    """Build the envelope; expects `sender` (and `room` unless `room_slug` is given) loaded."""
    return {
        "id": str(message.id),
        "seq": message.seq,
        "room": room_slug if room_slug is not None else message.room.slug,
        "origin": message.origin,
        "sender": {"kind": message.sender.kind, "name": message.sender.name},
        "text": message.text,
        "data": message.data,
        "created": message.created.isoformat(),
    }
