"""The MQTT server's own handling of PUBACKs that accept a publish (paho's for everything else),
and of its window of unanswered publishes."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

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


def _sending(window: int) -> tuple[_Client, list[int]]:
    """A client whose sends are recorded (no socket), with a window of `window`."""
    client, _seen = _client(paho.MQTTv5)
    sent: list[int] = []

    def send(mid: int, *_args: Any, **_kwargs: Any) -> MQTTErrorCode:
        sent.append(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._send_publish = send  # type: ignore[method-assign]
    client._max_inflight_messages = window
    return client, sent


def test_publishes_held_back_by_a_full_window_go_as_answers_come() -> None:
    client, sent = _sending(2)
    mids = [client.publish("rooms/lobby/messages", b"m", qos=1).mid for _ in range(5)]
    assert sent == mids[:2]
    for answered, expected in zip(mids, ([*mids[:3]], mids[:4], mids, mids, mids), strict=True):
        _acked(client, answered.to_bytes(2, "big"))
        assert sent == expected
    assert not client._out_messages and client._inflight_messages == 0


def test_a_reconnect_resends_no_more_than_the_new_window() -> None:
    client, sent = _sending(500)
    mids = [client.publish("rooms/lobby/messages", b"m", qos=1).mid for _ in range(5)]
    assert sent == mids  # all unanswered when the connection dropped
    client._messages_reconnect_reset_out()  # what paho does before it connects again
    client.fit_window(2)  # a broker with a Receive Maximum of 2 accepted the connection
    states = [client._out_messages[mid].state for mid in mids]
    assert states == [paho.mqtt_ms_publish] * 2 + [paho.mqtt_ms_queued] * 3
    assert client._max_inflight_messages == 2
    # A broker that takes more: raised again, nothing held back.
    client._messages_reconnect_reset_out()
    client.fit_window(500)
    assert [client._out_messages[mid].state for mid in mids] == [paho.mqtt_ms_publish] * 5
