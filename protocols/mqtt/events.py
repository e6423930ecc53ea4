"""The MQTT edge's ASGI contract: the `mqtt` scope and every event, as TypedDicts.

The protocol server (server.py) holds the broker connection and is the only
code that speaks MQTT; an application instance sees these events only.

Server to application (`receive`):
- `mqtt.connect`: the broker accepted the connection (first time and after
  every reconnect). The application subscribes here.
- `mqtt.message`: one PUBLISH. QoS 1/2 messages stay unacknowledged until the
  application sends `mqtt.ack` with the message's `ack_id`, so whatever it did
  before acknowledging (a database commit) survives a crash: the broker
  redelivers.
- `mqtt.disconnect`: the connection is gone; the server reconnects by itself
  and sends `mqtt.connect` again.
- `mqtt.published`: the fate of an `mqtt.publish` that carried a `publish_id`
  (accepted by the broker, refused for good, or lost with a replaced client),
  so the application can move a delivery cursor only past what the broker has.
- `mqtt.drain`: the server is stopping (SIGTERM): finish the work in hand
  (a batch being stored, publishes awaiting their answers), take no more, and
  send `mqtt.drained`; the server waits for it (at most its grace period),
  then disconnects. What was received and not acknowledged comes again.

Application to server (`send`):
- `mqtt.publish`, `mqtt.subscribe`, `mqtt.unsubscribe`, and `mqtt.ack` (an
  extension Channels' protocols do not need: acknowledgement after work);
  `mqtt.drained` once the application has drained.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

# A scope extension of this server: `scope["extensions"][RECEIVE_NOWAIT]()` returns the
# next event if one is queued, else None, without awaiting. `MqttConsumer` dispatches
# what is already queued with it, instead of one task and one `asyncio.wait` per event.
RECEIVE_NOWAIT = "bridge.mqtt.receive_nowait"


class MqttScope(TypedDict):
    type: Literal["mqtt"]
    asgi: dict[str, str]
    client_id: str
    # "host:port" of the broker, for logs.
    broker: str
    # 5 or 4 (MQTT 3.1.1), as negotiated.
    protocol: int
    # Server extensions, by name (RECEIVE_NOWAIT).
    extensions: NotRequired[dict[str, Any]]


class ConnectEvent(TypedDict):
    type: Literal["mqtt.connect"]
    # The broker still had our persistent session: subscriptions and queued messages.
    session_present: bool
    protocol: int


class MessageEvent(TypedDict):
    type: Literal["mqtt.message"]
    topic: str
    payload: bytes
    qos: int
    retain: bool
    # The broker redelivered it (DUP flag).
    dup: bool
    # MQTT 5 PUBLISH properties by name (ContentType, UserProperty, ...); {} on 3.1.1.
    properties: dict[str, Any]
    # Pass back in `mqtt.ack` once the message is safe; None for QoS 0.
    ack_id: int | None


class PublishedEvent(TypedDict):
    type: Literal["mqtt.published"]
    # The `publish_id` of the application's `mqtt.publish`.
    publish_id: int
    # "accepted": the broker acknowledged it (PUBACK/PUBCOMP; QoS 0: handed to the client).
    # "refused": it never will be (a failure reason code, over the broker's maximum packet
    # size, a topic paho refuses): dropped, logged, not retried.
    # "lost": the broker client it was handed to was replaced (shutdown, protocol fallback)
    # before an answer: it may or may not have arrived; publishing it again is safe.
    outcome: Literal["accepted", "refused", "lost"]
    reason: str


class DrainEvent(TypedDict):
    type: Literal["mqtt.drain"]


class DrainedEvent(TypedDict):
    type: Literal["mqtt.drained"]


class DisconnectEvent(TypedDict):
    type: Literal["mqtt.disconnect"]
    reason: str


class PublishEvent(TypedDict):
    type: Literal["mqtt.publish"]
    topic: str
    payload: bytes
    qos: int
    retain: NotRequired[bool]
    properties: NotRequired[dict[str, Any]]
    # Given: the server answers with one `mqtt.published` carrying it.
    publish_id: NotRequired[int]


class SubscribeEvent(TypedDict):
    type: Literal["mqtt.subscribe"]
    topics: list[str]
    qos: int


class UnsubscribeEvent(TypedDict):
    type: Literal["mqtt.unsubscribe"]
    topics: list[str]


class AckEvent(TypedDict):
    type: Literal["mqtt.ack"]
    ack_id: int


IncomingEvent = ConnectEvent | MessageEvent | DisconnectEvent | PublishedEvent | DrainEvent
OutgoingEvent = PublishEvent | SubscribeEvent | UnsubscribeEvent | AckEvent | DrainedEvent
