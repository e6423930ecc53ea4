"""What the bridge asks of the broker's dynamic security: nothing when it agrees, the least when not."""

from __future__ import annotations

from typing import Any

import pytest

from protocols.mqtt.dynsec import DynsecError
from protocols.mqtt.permissions import (
    Acl,
    BrokerState,
    DeviceGrant,
    apply,
    bridge_acls,
    device_acls,
    plan,
)
from protocols.mqtt.topics import Topics

TOPICS = Topics(shared_group="bridge")


def state_with(*grants: DeviceGrant, disabled: frozenset[str] = frozenset()) -> BrokerState:
    clients = {
        g.device_id: {"username": g.device_id, "clientid": g.device_id, "textname": "bridge device",
                      "roles": [{"rolename": g.role}], **({"disabled": True} if g.device_id in disabled else {})}
        for g in grants
    }
    roles = {g.role: device_acls(g, TOPICS) for g in grants}
    roles["bridge"] = bridge_acls(TOPICS)
    return BrokerState(clients=clients, roles=roles)


def test_a_device_is_granted_exactly_its_topics() -> None:
    acls = device_acls(DeviceGrant("thermo", True, ("garden",)), TOPICS)
    assert acls == {
        Acl("publishClientSend", "devices/thermo/#"),
        Acl("subscribeLiteral", "devices/thermo/commands"),
        Acl("subscribeLiteral", "devices/thermo/errors"),
        Acl("subscribeLiteral", "rooms/garden/messages"),
    }
    # No wildcard subscription at all: `$share/...` or `devices/#` never match these.
    assert not any(a.acltype == "subscribeLiteral" and ("#" in a.topic or "+" in a.topic) for a in acls)


def test_nothing_is_sent_when_the_broker_agrees() -> None:
    grant = DeviceGrant("thermo", True, ("lobby",))
    assert plan(state_with(grant), [grant], topics=TOPICS) == []


def test_a_new_device_gets_a_role_and_a_client_bound_to_its_id() -> None:
    grant = DeviceGrant("thermo", True, ("lobby",))
    commands = plan(state_with(), [grant], topics=TOPICS, passwords={"thermo": "pw"})
    assert [c["command"] for c in commands] == ["createRole", "createClient"]
    assert commands[1]["clientid"] == "thermo" and commands[1]["password"] == "pw"


def test_leaving_a_room_removes_its_grant_and_disconnects_the_device() -> None:
    before = DeviceGrant("thermo", True, ("lobby", "vault"))
    after = DeviceGrant("thermo", True, ("lobby",))
    assert plan(state_with(before), [after], topics=TOPICS) == [
        {"command": "removeRoleACL", "rolename": "device-thermo", "acltype": "subscribeLiteral",
         "topic": "rooms/vault/messages"},
        {"command": "setClientId", "username": "thermo", "clientid": "thermo"},
    ]


def test_disabling_enabling_and_removing() -> None:
    grant = DeviceGrant("thermo", True, ())
    disabled = DeviceGrant("thermo", False, ())
    assert plan(state_with(grant), [disabled], topics=TOPICS) == [
        {"command": "disableClient", "username": "thermo"}
    ]
    assert plan(state_with(grant, disabled=frozenset({"thermo"})), [grant], topics=TOPICS) == [
        {"command": "enableClient", "username": "thermo"}
    ]
    assert plan(state_with(grant), [], topics=TOPICS, gone=["thermo"]) == [
        {"command": "deleteClient", "username": "thermo"},
        {"command": "deleteRole", "rolename": "device-thermo"},
    ]


def test_the_bridge_may_read_every_device_and_its_shared_group() -> None:
    acls = bridge_acls(Topics(prefix="acme", shared_group="g"))
    assert Acl("subscribeLiteral", "$share/g/acme/devices/#") in acls
    assert Acl("publishClientSend", "acme/rooms/#") in acls


class RacingBroker:
    """A dynsec client whose first batch loses to another writer (the role and client appear)."""

    def __init__(self, final: BrokerState, errors: dict[str, str]) -> None:
        self.states = [state_with(), final]
        self.errors = errors
        self.batches: list[list[str]] = []

    def check(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        clients = {"data": {"clients": list(state.clients.values())}}
        roles = {"data": {"roles": [
            {"rolename": name, "acls": [a.as_json() for a in acls]} for name, acls in state.roles.items()
        ]}}
        return [clients, roles]

    def call(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches.append([c["command"] for c in commands])
        if len(self.batches) == 1:
            return [{"error": self.errors.get(c["command"])} if c["command"] in self.errors else {}
                    for c in commands]
        return [{} for _ in commands]


def test_a_role_created_meanwhile_by_another_writer_is_read_again_not_an_error() -> None:
    grant = DeviceGrant("thermo", True, ("lobby",))
    broker = RacingBroker(state_with(grant), {"createRole": "Role already exists",
                                              "createClient": "Client already exists"})
    sent = apply(broker, [grant], topics=TOPICS, bridge_user=None,  # type: ignore[arg-type]
                 everything=False, named=["thermo"], passwords={"thermo": "pw"})
    # The second pass only sets the password on the client the other writer created.
    assert broker.batches[1] == ["setClientPassword"]
    assert sent[-1] == {"command": "setClientPassword", "username": "thermo", "password": "pw"}


def test_a_refusal_that_rereading_cannot_fix_is_an_error() -> None:
    grant = DeviceGrant("thermo", True, ("lobby",))
    broker = RacingBroker(state_with(), {"createClient": "Invalid password"})
    with pytest.raises(DynsecError, match="createClient refused: Invalid password"):
        apply(broker, [grant], topics=TOPICS, bridge_user=None,  # type: ignore[arg-type]
              everything=False, named=["thermo"], passwords={"thermo": "x"})
    assert len(broker.batches) == 1
