from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from bridge.services.devices import device_register
from bridge.services.rooms import room_create
from project.asgi import application
from protocols.mqtt.testing import MqttCommunicator


def _setup() -> None:
    room_create(slug="lobby")
    room_create(slug="kitchen")
    room_create(slug="vault")
    device_register(device_id="sensor-1", post_rooms=["lobby", "kitchen"])


@pytest.fixture
def bridge_settings() -> dict[str, object]:
    """Settings the bridge starts with (it reads them once): parametrize to change them."""
    return {}


@pytest.fixture
async def bridge(transactional_db: None, bridge_settings: dict[str, object]) -> AsyncIterator[MqttCommunicator]:
    """The bridge's MQTT application through the project's router, connected; one device."""
    await database_sync_to_async(_setup)()
    with override_settings(MQTT_UNKNOWN_DEVICES="refuse", MQTT_SHARED_GROUP="bridge", **bridge_settings):
        communicator = MqttCommunicator(application)
        await communicator.connect()
        try:
            yield communicator
        finally:
            await communicator.close()
