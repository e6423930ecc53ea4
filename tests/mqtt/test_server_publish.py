"""What the MQTT server hands to paho: never a packet the broker would refuse by disconnecting."""

from __future__ import annotations

import asyncio
from typing import Any

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import MqttServer, _packet_size
from protocols.mqtt.topics import shorten


class FakeClient:
    def __init__(self, rc: MQTTErrorCode = MQTTErrorCode.MQTT_ERR_SUCCESS) -> None:
        self.rc = rc
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Any:
        self.published.append((topic, payload))
        return type("Info", (), {"rc": self.rc, "mid": len(self.published)})()


def server() -> MqttServer:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    return MqttServer(app, MqttConfig.from_url("mqtt://127.0.0.1:1883", client_id="bridge-t"))


def publish(topic: str, payload: bytes) -> dict[str, Any]:
    return {"type": "mqtt.publish", "topic": topic, "payload": payload, "qos": 1}


def test_a_publish_over_the_brokers_maximum_packet_size_is_dropped_not_sent() -> None:
    edge, client = server(), FakeClient()
    edge._max_packet = 1000
    edge._publish(client, publish("rooms/lobby/messages", b"x" * 2000))  # type: ignore[arg-type]
    edge._publish(client, publish("rooms/lobby/messages", b"small"))  # type: ignore[arg-type]
    assert client.published == [("rooms/lobby/messages", b"small")]  # the next one still goes
    assert edge.refused == 1


def test_a_publish_paho_refuses_is_dropped_and_the_server_goes_on() -> None:
    edge, client = server(), FakeClient(MQTTErrorCode.MQTT_ERR_INVAL)
    edge._publish(client, publish("rooms/lobby/messages", b"x"))  # type: ignore[arg-type]
    assert edge.refused == 1


def outcomes(edge: MqttServer) -> list[tuple[int, str]]:
    found = []
    while not edge._queue.empty():
        event = edge._queue.get_nowait()
        assert event["type"] == "mqtt.published"
        found.append((event["publish_id"], event["outcome"]))
    return found


def test_a_publish_with_an_id_is_answered_once_the_broker_has_it_or_never_will() -> None:
    edge, client = server(), FakeClient()
    edge._max_packet = 1000
    edge._publish(client, {**publish("t/1", b"x"), "publish_id": 1})  # type: ignore[arg-type]
    edge._publish(client, {**publish("t/2", b"x" * 2000), "publish_id": 2})  # type: ignore[arg-type]
    edge._publish(client, {**publish("t/3", b"x"), "publish_id": 3})  # type: ignore[arg-type]
    edge._publish(client, {**publish("t/4", b"x"), "qos": 0, "publish_id": 4})  # type: ignore[arg-type]
    assert outcomes(edge) == [(2, "refused"), (4, "accepted")]  # QoS 0: handed over is all there is
    edge._published(1, ReasonCode(PacketTypes.PUBACK, identifier=0))
    edge._published(2, ReasonCode(PacketTypes.PUBACK, identifier=0x87))  # mid 2 is t/3's
    assert outcomes(edge) == [(1, "accepted"), (3, "refused")]
    assert edge.refused == 2
    assert edge._inflight == {}


def test_publishes_a_replaced_client_still_held_are_lost_and_may_be_sent_again() -> None:
    edge, client = server(), FakeClient()
    edge._client = client  # type: ignore[assignment]
    client.disconnect = lambda: None  # type: ignore[attr-defined]
    client.loop_stop = lambda: None  # type: ignore[attr-defined]
    edge._publish(client, {**publish("t/1", b"x"), "publish_id": 7})  # type: ignore[arg-type]
    edge._publish(FakeClient(MQTTErrorCode.MQTT_ERR_QUEUE_SIZE), {**publish("t/2", b"x"), "publish_id": 8})  # type: ignore[arg-type]
    asyncio.run(edge._stop_client())
    assert outcomes(edge) == [(8, "lost"), (7, "lost")]
    assert edge.refused == 0


def test_packet_size_and_shorten() -> None:
    assert _packet_size("a/b", b"12345", 1) == 1 + 1 + 2 + 3 + 2 + 1 + 5
    assert _packet_size("t", b"x" * 70000, 1) > 65536
    cut = shorten("x" * 33000)
    assert len(cut) < 250 and cut.endswith("(33000 characters)")
    assert shorten("short") == "short"


def test_message_properties_are_given_when_set_and_empty_when_none_are() -> None:
    from paho.mqtt.properties import Properties

    from protocols.mqtt.server import _properties

    props = Properties(PacketTypes.PUBLISH)
    assert _properties(props) == {} and _properties(None) == {}
    props.MessageExpiryInterval = 30
    props.CorrelationData = b"\x01\x02"
    props.UserProperty = ("id", "m-1")
    assert _properties(props) == {
        "MessageExpiryInterval": 30, "CorrelationData": "0102", "UserProperty": [("id", "m-1")],
    }
    props.clear()
    assert _properties(props) == {}
