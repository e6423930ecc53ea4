"""Prometheus metrics: counted where the work happens, served to the allowed networks only."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from bridge.health import HEALTH
from bridge.models import ApiToken, Room
from bridge.ops import OpsServer, metrics_routes
from bridge.services.rooms import room_create
from bridge.services.tasks import task_schedule

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def lobby() -> Room:
    return room_create(slug="lobby", title="Lobby")


@pytest.fixture
def auth() -> dict[str, str]:
    user = get_user_model().objects.create_user(username="script", password="pw")
    return {"Authorization": f"Token {ApiToken.objects.create(user=user).key}"}


def post(client: Client, body: object, headers: dict[str, str]) -> int:
    response = client.post("/api/rooms/lobby/messages", json.dumps(body),
                           content_type="application/json", headers=headers)
    return response.status_code


def test_stored_replayed_and_refused_messages_are_counted(client: Client, lobby: Room, auth: dict[str, str]) -> None:
    stored, replayed = sample("bridge_messages_in_total", edge="api"), sample("bridge_messages_replayed_total", edge="api")
    refusals = sample("bridge_refusals_total", edge="api", reason="empty_message")
    stores = sample("bridge_store_seconds_count")
    assert post(client, {"text": "one", "client_id": "k1"}, auth) == 201
    assert post(client, {"text": "one", "client_id": "k1"}, auth) == 201  # a replay: stored once
    assert post(client, {"text": "two"}, auth) == 201
    assert post(client, {"text": ""}, auth) == 400
    assert sample("bridge_messages_in_total", edge="api") == stored + 2
    assert sample("bridge_messages_replayed_total", edge="api") == replayed + 1
    assert sample("bridge_refusals_total", edge="api", reason="empty_message") == refusals + 1
    assert sample("bridge_store_seconds_count") == stores + 3


def test_web_metrics_answer_allowed_networks_only(client: Client, lobby: Room) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "bridge_messages_in_total" in text and "bridge_task_queue_depth" in text
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    with override_settings(METRICS_NETWORKS=(ipaddress.ip_network("203.0.113.0/24"),)):
        assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 200


def test_state_is_read_when_scraped(client: Client, lobby: Room) -> None:
    task_schedule(name="room_stats", key="room_stats:metrics-test", args={"room": lobby.pk})
    HEALTH.failing("mqtt_broker", "test: broker away")
    try:
        client.get("/metrics")  # registers the state collector on the first scrape
        assert sample("bridge_task_queue_depth") >= 1
        assert sample("bridge_task_queue_age_seconds") >= 0
        assert sample("bridge_dependency_up", check="mqtt_broker") == 0
        HEALTH.ok("mqtt_broker")
        assert sample("bridge_dependency_up", check="mqtt_broker") == 1
    finally:
        HEALTH.forget("mqtt_broker")


async def test_the_ops_port_serves_metrics() -> None:
    server = OpsServer(host="127.0.0.1", port=0, routes=metrics_routes())
    await server.start()
    try:
        def fetch() -> tuple[int, str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()

        status, content_type, text = await asyncio.to_thread(fetch)
    finally:
        await server.stop()
    assert status == 200 and content_type.startswith("text/plain")
    assert "# TYPE bridge_refusals_total counter" in text
