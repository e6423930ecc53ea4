"""The MQTT server's own decoding of incoming PUBLISH packets without properties, held to
paho's: the same message for every packet it takes, paho's path for the rest."""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from protocols.mqtt.server import _Client


def _publish(topic: bytes, payload: bytes, *, qos: int, mid: int = 0, properties: bytes | None = b"\x00",
             dup: bool = False, retain: bool = False) -> tuple[int, bytes]:
    """(first header byte, the rest after the remaining length) of a PUBLISH."""
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    return header, body + (properties or b"") + payload


def _received(client_class: type[paho.Client], protocol: MQTTProtocolVersion, header: int, body: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """What the handler returned (QoS 2: a PUBREC that finds no connection) and the messages."""
    client = client_class(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=True)
    seen: list[dict[str, Any]] = []

    def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        props = message.properties
        seen.append({
            "topic": message.topic, "payload": message.payload, "qos": message.qos, "mid": message.mid,
            "dup": message.dup, "retain": message.retain,
            "properties": props.json() if props is not None else {},
        })

    client.on_message = on_message
    client._in_packet["command"] = header
    client._in_packet["packet"] = bytearray(body)
    return client._handle_publish(), seen


CASES = {
    "qos 1": _publish(b"devices/d1/rooms/lobby", b'{"text": "hi", "id": "m-1"}', qos=1, mid=7),
    "qos 0": _publish(b"devices/d1/rooms/lobby", b"plain", qos=0),
    "dup and retain": _publish(b"devices/d1/telemetry", b"{}", qos=1, mid=65535, dup=True, retain=True),
    "empty payload": _publish(b"devices/d1/rooms/lobby", b"", qos=1, mid=1),
    "a payload that looks like properties": _publish(b"t", b"\x00\x01\x02", qos=1, mid=2),
    "non-ascii topic": _publish("devices/d1/rooms/caf\u00e9".encode(), "\u00e9t\u00e9".encode(), qos=1, mid=3),
    # Paho's path: properties, QoS 2.
    "with properties": _publish(b"devices/d1/rooms/lobby", b"x", qos=1, mid=4,
                                properties=bytes([5, 0x03, 0, 2]) + b"js"),  # content type "js"
    "qos 2": _publish(b"devices/d1/rooms/lobby", b"x", qos=2, mid=5),
}


@pytest.mark.parametrize("case", CASES)
def test_a_publish_reads_as_paho_reads_it(case: str) -> None:
    header, body = CASES[case]
    ours = _received(_Client, paho.MQTTv5, header, body)
    theirs = _received(paho.Client, paho.MQTTv5, header, body)
    assert ours == theirs
    if case != "qos 2":  # paho holds a QoS 2 message until its PUBREL
        assert ours[0] == MQTTErrorCode.MQTT_ERR_SUCCESS and len(ours[1]) == 1


def test_properties_are_none_only_when_the_packet_has_none() -> None:
    got: list[Any] = []
    for case, expected in (("qos 1", None), ("with properties", {"ContentType": "js"})):
        header, body = CASES[case]
        client = _Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True)
        got.clear()
        client.on_message = lambda _c, _u, message: got.append(message.properties)
        client._in_packet["command"], client._in_packet["packet"] = header, bytearray(body)
        client._handle_publish()
        assert (got[0].json() if got[0] is not None else None) == expected


def test_a_truncated_publish_is_refused_as_paho_refuses_it() -> None:
    header, body = CASES["qos 1"]
    for cut in (body[:1], body[:5], body[:-len(b'{"text": "hi", "id": "m-1"}') - 1]):  # no properties byte
        results: list[tuple[str, Any]] = []
        for client_class in (_Client, paho.Client):
            client = client_class(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True)
            client.on_message = lambda *_: pytest.fail("a truncated packet delivered")
            client._in_packet["command"], client._in_packet["packet"] = header, bytearray(cut)
            try:
                results.append(("returned", client._handle_publish()))
            except MalformedPacket as exc:  # paho's reader drops the connection on it
                results.append(("raised", type(exc).__name__))
        assert results[0] == results[1] == ("raised", "MalformedPacket"), (cut, results)


def test_mqtt_311_is_paho_s() -> None:
    header, body = _publish(b"devices/d1/rooms/lobby", b"hello", qos=1, mid=9, properties=None)
    assert _received(_Client, paho.MQTTv311, header, body) == _received(paho.Client, paho.MQTTv311, header, body)
