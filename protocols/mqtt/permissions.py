"""What each device may do on the broker, from the database, pushed to mosquitto's dynsec plugin.

Per device, a broker client named after it (username = device id), bound to
the client id = device id (nobody else can connect as it, and it cannot
connect as anyone else, the bridge included), with its own role granting
exactly:
- publish `devices/<id>/#` (its posts, telemetry, status and Last Will);
- subscribe `devices/<id>/commands`, `devices/<id>/errors`, and
  `rooms/<room>/messages` of each room it listens to (literal filters, so no
  wildcard and no `$share/...` filter is granted: mosquitto checks a shared
  subscription's full filter against these).
A disabled device's client is disabled; a removed device's client and role are
deleted: mosquitto disconnects the client at once in both cases; when its role
changes the bridge disconnects it too (it reconnects and subscribes under its
new grants).

The bridge's own account gets the `bridge` role: publish room messages,
commands and errors; subscribe to `devices/#` and its shared group.

`plan()` is pure: the commands that take the broker from what it has to
what the database says, and nothing when they agree (a role change
disconnects the device, so nothing is re-sent needlessly).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.models import Device
from protocols.mqtt.dynsec import Command, DynsecClient, DynsecError
from protocols.mqtt.topics import Topics

logger = logging.getLogger(__name__)

BRIDGE_ROLE = "bridge"
DEVICE_ROLE_PREFIX = "device-"
# Marks the broker clients this module manages (others are left alone).
TEXTNAME = "bridge device"
# Reads and plans when another writer changed the same clients or roles under us.
APPLY_ATTEMPTS = 3
# Refusals that mean someone else already did it (or undid it): not an error, once re-read.
RACED = ("already exists", "not found")


def _raced(error: str) -> bool:
    return any(r in error.lower() for r in RACED)


@dataclass(frozen=True, order=True)
class Acl:
    acltype: str
    topic: str

    def as_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "allow": True}


@dataclass(frozen=True)
class DeviceGrant:
    device_id: str
    enabled: bool
    listen_rooms: tuple[str, ...]

    @property
    def role(self) -> str:
        return f"{DEVICE_ROLE_PREFIX}{self.device_id}"


def device_grants(device_ids: Iterable[str] | None = None) -> list[DeviceGrant]:
    """The database's view (runs in a database thread); all devices, or the named ones."""
    devices = Device.objects.prefetch_related("listen_rooms").order_by("device_id")
    if device_ids is not None:
        devices = devices.filter(device_id__in=list(device_ids))
    return [
        DeviceGrant(d.device_id, d.enabled, tuple(sorted(r.slug for r in d.listen_rooms.all())))
        for d in devices
    ]


def device_acls(grant: DeviceGrant, topics: Topics) -> frozenset[Acl]:
    own = topics.device_base(grant.device_id)
    acls = {
        Acl("publishClientSend", f"{own}/#"),
        Acl("subscribeLiteral", topics.commands(grant.device_id)),
        Acl("subscribeLiteral", topics.errors(grant.device_id)),
    }
    acls |= {Acl("subscribeLiteral", topics.room_messages(slug)) for slug in grant.listen_rooms}
    return frozenset(acls)


def bridge_acls(topics: Topics) -> frozenset[Acl]:
    """The bridge reads every device, shared or not (MQTT 3.1.1 processes do not share)."""
    acls = {
        Acl("publishClientSend", topics.all_rooms()),
        Acl("publishClientSend", topics.commands("+")),
        Acl("publishClientSend", topics.errors("+")),
        Acl("publishClientReceive", topics.all_devices()),
        Acl("subscribeLiteral", topics.all_devices()),
    }
    if topics.shared_group:
        acls.add(Acl("subscribeLiteral", f"$share/{topics.shared_group}/{topics.all_devices()}"))
    return frozenset(acls)


@dataclass
class BrokerState:
    """What the broker has now: clients (username: listClients entry), roles (name: ACLs)."""

    clients: dict[str, dict[str, Any]]
    roles: dict[str, frozenset[Acl]]

    @classmethod
    def read(cls, client: DynsecClient) -> BrokerState:
        clients, roles = client.check(
            [{"command": "listClients", "verbose": True}, {"command": "listRoles", "verbose": True}]
        )
        return cls(
            clients={c["username"]: c for c in clients.get("data", {}).get("clients", [])},
            roles={
                r["rolename"]: frozenset(
                    Acl(a["acltype"], a["topic"]) for a in r.get("acls", []) if a.get("allow")
                )
                for r in roles.get("data", {}).get("roles", [])
            },
        )

    def roles_of(self, username: str) -> set[str]:
        return {r["rolename"] for r in self.clients.get(username, {}).get("roles", [])}


def _role(state: BrokerState, name: str, wanted: frozenset[Acl]) -> list[Command]:
    have = state.roles.get(name)
    if have is None:
        return [{"command": "createRole", "rolename": name,
                 "acls": [a.as_json() for a in sorted(wanted)]}]
    return [
        *({"command": "removeRoleACL", "rolename": name, "acltype": a.acltype, "topic": a.topic}
          for a in sorted(have - wanted)),
        *({"command": "addRoleACL", "rolename": name, **a.as_json()} for a in sorted(wanted - have)),
    ]


def plan(
    state: BrokerState,
    grants: list[DeviceGrant],
    *,
    topics: Topics,
    gone: Iterable[str] = (),
    passwords: dict[str, str] | None = None,
) -> list[Command]:
    """Commands that make the broker match `grants`; `gone`: device ids to delete if managed.

    `passwords` (device id: password) are set on those clients: the bridge
    never stores device passwords, the broker keeps only its own hash.
    """
    passwords = passwords or {}
    commands = _role(state, BRIDGE_ROLE, bridge_acls(topics))
    for grant in grants:
        role_changes = _role(state, grant.role, device_acls(grant, topics))
        commands += role_changes
        have = state.clients.get(grant.device_id)
        if have is None:
            create: Command = {
                "command": "createClient", "username": grant.device_id,
                "clientid": grant.device_id, "textname": TEXTNAME,
                "roles": [{"rolename": grant.role}],
            }
            if grant.device_id in passwords:
                create["password"] = passwords[grant.device_id]
            commands.append(create)
            if not grant.enabled:
                commands.append({"command": "disableClient", "username": grant.device_id})
            continue
        if have.get("clientid") != grant.device_id or (role_changes and grant.role in state.roles):
            # Setting the client id disconnects the client. Needed after its role
            # changed: mosquitto 2.0.11 does not always disconnect a role's clients
            # (not those given the role at creation), and a subscription made under
            # the old grants would go on receiving.
            commands.append({"command": "setClientId", "username": grant.device_id,
                             "clientid": grant.device_id})
        if grant.role not in state.roles_of(grant.device_id):
            commands.append({"command": "addClientRole", "username": grant.device_id,
                             "rolename": grant.role})
        if bool(have.get("disabled")) == grant.enabled:
            commands.append({"command": "enableClient" if grant.enabled else "disableClient",
                             "username": grant.device_id})
        if grant.device_id in passwords:
            commands.append({"command": "setClientPassword", "username": grant.device_id,
                             "password": passwords[grant.device_id]})
    for device_id in gone:
        if state.clients.get(device_id, {}).get("textname") == TEXTNAME:
            commands.append({"command": "deleteClient", "username": device_id})
        if f"{DEVICE_ROLE_PREFIX}{device_id}" in state.roles:
            commands.append({"command": "deleteRole", "rolename": f"{DEVICE_ROLE_PREFIX}{device_id}"})
    return commands


def managed_devices(state: BrokerState) -> set[str]:
    """Broker clients this module created (for finding devices deleted from the database)."""
    return {name for name, c in state.clients.items() if c.get("textname") == TEXTNAME}


def apply(
    client: DynsecClient,
    grants: list[DeviceGrant],
    *,
    topics: Topics,
    bridge_user: str | None,
    everything: bool,
    named: Iterable[str] = (),
    passwords: dict[str, str] | None = None,
) -> list[Command]:
    """Read the broker, send what differs; returns the commands sent (runs in a worker thread).

    `everything`: `grants` are all devices, and managed clients without one are
    deleted. Otherwise `named` ids without a grant were deleted from the database.
    """
    have = {g.device_id for g in grants}
    sent: list[Command] = []
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        state = BrokerState.read(client)
        gone = (managed_devices(state) - have) if everything else set(named) - have
        commands = plan(state, grants, topics=topics, gone=sorted(gone), passwords=passwords)
        responses = client.call(commands)
        sent += commands
        refused = [(c, r["error"]) for c, r in zip(commands, responses, strict=True) if r.get("error")]
        if not refused:
            break
        if attempt == APPLY_ATTEMPTS or not all(_raced(error) for _, error in refused):
            command, error = refused[0]
            raise DynsecError(f"{command['command']} refused: {error}")
        # Another writer (a runmqtt applying the same change event, the CLI) got there
        # between our read and our commands: read again and send what still differs.
        logger.info("broker permissions changed meanwhile (%s: %s); reading them again",
                    refused[0][0]["command"], refused[0][1])
    if bridge_user and bridge_user in state.clients and BRIDGE_ROLE not in state.roles_of(bridge_user):
        # Last, once per broker: mosquitto disconnects every session of a client whose
        # roles change, this very connection included, so no answer comes back (the
        # next pass checks it took). runmqtt does this before its data session connects.
        own: Command = {"command": "addClientRole", "username": bridge_user, "rolename": BRIDGE_ROLE}
        client.send_and_forget(own)
        sent.append(own)
    return sent
