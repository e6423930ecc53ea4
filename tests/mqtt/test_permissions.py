"""What the bridge asks of the broker's dynamic security: nothing when it agrees, the least when not."""

from __future__ import annotations

from protocols.mqtt.permissions import (
    Acl,
    BrokerState,
    DeviceGrant,
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
