"""Property-based: whatever topic and payload a device sends, it is stored or refused with our error."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.exceptions import BridgeError
from bridge.models import Message, Telemetry
from bridge.services.devices import device_register
from bridge.services.rooms import room_create
from protocols.mqtt.ingest import ingest_batch
from protocols.mqtt.topics import Topics
from tests.support.hostile import json_values, message_bodies, texts

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(settings: object) -> None:
    settings.MQTT_UNKNOWN_DEVICES = "refuse"  # type: ignore[attr-defined]
    room_create(slug="lobby")
    device_register(device_id="sensor-1", post_rooms=["lobby"])


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates as a broken client sends them


topics = st.one_of(
    st.just("devices/sensor-1/rooms/lobby"),
    st.just("devices/sensor-1/telemetry"),
    st.just("devices/sensor-1/status"),
    texts.map(lambda t: f"devices/sensor-1/rooms/{t}"),
    texts.map(lambda t: f"devices/{t}/telemetry"),
    st.text(max_size=40),
)
payloads = st.one_of(
    st.binary(max_size=64),
    texts.map(_wire),
    message_bodies.map(lambda b: _wire(json.dumps(b, ensure_ascii=False))),
    message_bodies.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=topics, payload=payloads)
def test_any_device_message_is_stored_or_refused_with_our_error(device: None, topic: str, payload: bytes) -> None:
    before = (Message.objects.count(), Telemetry.objects.count())
    (outcome,) = ingest_batch(topics=Topics(), messages=[(topic, payload)])
    if outcome.error is not None:
        assert isinstance(outcome.error, BridgeError) and outcome.error.code and outcome.error.detail
        assert (Message.objects.count(), Telemetry.objects.count()) == before
    if outcome.envelope is not None:
        msgpack.packb(outcome.envelope)  # what the channel layer must carry to fan it out
        json.dumps(outcome.envelope).encode("utf-8")
