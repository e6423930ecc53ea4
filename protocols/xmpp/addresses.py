"""Addresses on the component's domain: one puppet JID per bridged sender, and room JIDs.

A puppet's localpart is `<kind>~<name>` with every character outside
`[a-z0-9._-]` written as `=XX` per UTF-8 byte: localparts are case-folded by
the server, and device ids are case-sensitive, so "Sensor1" and "sensor1"
must stay two puppets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.envelope import Sender

PUPPET_RESOURCE = "bridge"
_SAFE = re.compile(r"[a-z0-9._-]")
_ENCODED = re.compile(r"=([0-9A-F]{2})")
# The nickname suffix used only when a bridged sender's plain name is taken in the room.
KIND_LABELS = {"user": "web", "device": "device", "system": "bridge", "xmpp": "xmpp"}


@dataclass(frozen=True)
class Jid:
    """A parsed JID: enough for routing decisions, not a validator."""

    local: str
    domain: str
    resource: str

    @classmethod
    def parse(cls, value: str) -> Jid:
        bare, _, resource = value.partition("/")
        local, at, domain = bare.partition("@")
        if not at:
            local, domain = "", bare
        return cls(local=local, domain=domain.lower(), resource=resource)

    @property
    def bare(self) -> str:
        return f"{self.local}@{self.domain}" if self.local else self.domain


def encode_local(name: str) -> str:
    return "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode("utf-8"))
        for ch in name
    )


def decode_local(local: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(local):
        match = _ENCODED.match(local, i)
        if match:
            raw.append(int(match.group(1), 16))
            i = match.end()
        else:
            raw.extend(local[i].encode("utf-8"))
            i += 1
    return raw.decode("utf-8", errors="replace")


def puppet_jid(sender: Sender, *, component: str) -> str:
    """The full JID a bridged sender speaks from."""
    return f"{sender['kind']}~{encode_local(sender['name'])}@{component}/{PUPPET_RESOURCE}"


def puppet_sender(jid: str, *, component: str) -> Sender | None:
    """The sender behind a puppet JID, or None when it is not one of ours."""
    parsed = Jid.parse(jid)
    if parsed.domain != component.lower() or "~" not in parsed.local:
        return None
    kind, _, encoded = parsed.local.partition("~")
    if kind not in KIND_LABELS or not encoded:
        return None
    return {"kind": kind, "name": decode_local(encoded)}


# Nicks tried for a puppet whose plain name is taken: "name", "name (web)", "name (web 2)", ...
MAX_NICK_ATTEMPTS = 5


def puppet_nick(sender: Sender, attempt: int) -> str:
    """The nickname to try: the plain name first; on a clash, the name with its edge."""
    name = sender["name"]
    if attempt == 0:
        return name
    label = KIND_LABELS.get(sender["kind"], sender["kind"])
    return f"{name} ({label})" if attempt == 1 else f"{name} ({label} {attempt})"


def room_jid(slug: str, *, muc_service: str) -> str:
    return f"{slug}@{muc_service}"


def occupant_jid(slug: str, nick: str, *, muc_service: str) -> str:
    return f"{slug}@{muc_service}/{nick}"
