"""The MQTT server's own handling of PUBACKs that accept a publish, paho's for everything else."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from protocols.mqtt.server import PUBACK_SUCCESS, _Client


def _client(protocol: int) -> tuple[_Client, list[tuple[int, Any]]]:
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    seen: list[tuple[int, Any]] = []
    client.on_publish = lambda _c, _u, mid, reason, _props: seen.append((mid, reason))
    return client, seen


def _acked(client: _Client, body: bytes) -> None:
    client._in_packet["packet"] = body
    client._handle_pubackcomp("PUBACK")


def test_an_accepting_puback_confirms_its_publish_as_paho_would() -> None:
    for protocol in (paho.MQTTv5, paho.MQTTv311):
        client, seen = _client(protocol)
        first = client.publish("rooms/lobby/messages", b"a", qos=1).mid  # not connected: kept, in flight
        second = client.publish("rooms/lobby/messages", b"b", qos=1).mid
        _acked(client, second.to_bytes(2, "big"))
        assert [(mid, str(reason), reason.is_failure) for mid, reason in seen] == [(second, "Success", False)]
        assert seen[0][1] is PUBACK_SUCCESS  # not built again for each acknowledgement
        assert second not in client._out_messages and first in client._out_messages
        _acked(client, second.to_bytes(2, "big"))  # a duplicate answer: told once
        assert len(seen) == 1
    # Mosquitto answers 0x10 (No matching subscribers) when nobody listens: accepted too.
    client, seen = _client(paho.MQTTv5)
    for body in (b"\x10", b"\x10\x00"):  # the reason; the reason and no properties
        mid = client.publish("rooms/lobby/messages", b"a", qos=1).mid
        _acked(client, mid.to_bytes(2, "big") + body)
        assert (seen[-1][0], str(seen[-1][1]), seen[-1][1].is_failure) == (mid, "No matching subscribers", False)
        assert mid not in client._out_messages


def test_a_puback_with_a_reason_or_properties_goes_to_paho() -> None:
    client, seen = _client(paho.MQTTv5)
    mid = client.publish("rooms/lobby/messages", b"a", qos=1).mid
    _acked(client, mid.to_bytes(2, "big") + bytes([0x87]))  # Not authorized
    assert [(m, str(reason), reason.is_failure) for m, reason in seen] == [(mid, "Not authorized", True)]
    assert mid not in client._out_messages
    # A reason string property (0x1F): paho reads it.
    mid = client.publish("rooms/lobby/messages", b"b", qos=1).mid
    _acked(client, mid.to_bytes(2, "big") + bytes([0x10, 5, 0x1F, 0, 2]) + b"hi")
    assert str(seen[-1][1]) == "No matching subscribers" and mid not in client._out_messages
