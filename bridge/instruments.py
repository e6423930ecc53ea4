"""Prometheus metrics of every process (prometheus-client), defined once here.

Edges count what they do with the small functions below; what is a state
rather than an event (the task queue, XMPP occupants, dependency health) is
read when scraped, by `StateCollector`. The web process serves `/metrics`
(`bridge.views.ops`), runmqtt, runxmpp and runworker serve it on their ops port
(`bridge.ops`). Names: `bridge_<what>_<unit>`; edges are web, api, mqtt, xmpp,
system (the message origins), reasons the bridge's error codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from bridge.health import HEALTH, Health

MESSAGES_IN = Counter(
    "bridge_messages_in", "Messages stored, by the edge they came in from.", ["edge"]
)
MESSAGES_REPLAYED = Counter(
    "bridge_messages_replayed",
    "Messages whose idempotency key was already stored: answered, not stored again.", ["edge"],
)
MESSAGES_OUT = Counter(
    "bridge_messages_out", "Messages delivered to clients, by edge (frames, publishes, stanzas).",
    ["edge"],
)
REFUSALS = Counter(
    "bridge_refusals", "Inputs refused with an error to their sender, by edge and reason.",
    ["edge", "reason"],
)
STORE_SECONDS = Histogram(
    "bridge_store_seconds", "One store transaction (one message or a batch of one room).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FANOUT_SECONDS = Histogram(
    "bridge_fanout_seconds", "Telling a room's group of a stored message (channel layer group_send).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
DROPPED_OVER_RATE = Counter(
    "bridge_dropped_over_rate",
    "Messages acknowledged and dropped because their sender was over its rate (MQTT), by edge.",
    ["edge"],
)
WEBSOCKETS = Gauge("bridge_websocket_connections", "WebSocket connections open in this process.")


def refused(edge: str, reason: str) -> None:
    REFUSALS.labels(edge=edge, reason=reason).inc()


def dropped_over_rate(edge: str, count: int) -> None:
    DROPPED_OVER_RATE.labels(edge=edge).inc(count)


def delivered(edge: str, count: int = 1) -> None:
    MESSAGES_OUT.labels(edge=edge).inc(count)


@contextmanager
def timed(histogram: Histogram) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)


class StateCollector(Collector):
    """Read at scrape time: dependency health, the task queue, XMPP occupants.

    The database queries run in the scraping thread (the endpoints call
    `render` off the event loop); a failing query leaves its metric out, and
    the `database` check says why.
    """

    def __init__(self, health: Health = HEALTH) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "bridge_dependency_up",
            "1 while a dependency or loop of this process answers (database, channel_layer, "
            "mqtt_broker, xmpp, loop:...), else 0.", labels=["check"],
        )
        for name, state in sorted(self.health.snapshot().items()):
            up.add_metric([name], 1.0 if state.ok else 0.0)
        yield up
        yield from _database_state()


def _database_state() -> Iterator[GaugeMetricFamily]:
    from django.db import DatabaseError
    from django.db.models import Count, Min
    from django.utils import timezone

    from bridge.models import Presence, Task

    try:
        pending = Task.objects.filter(state=Task.State.PENDING, due_at__lte=timezone.now())
        queue = pending.aggregate(depth=Count("id"), oldest=Min("due_at"))
        occupants = Presence.objects.filter(identity__kind="xmpp").count()
    except DatabaseError:
        return
    depth = GaugeMetricFamily("bridge_task_queue_depth", "Tasks due and not yet claimed by a worker.")
    depth.add_metric([], float(queue["depth"]))
    age = GaugeMetricFamily(
        "bridge_task_queue_age_seconds", "How long the oldest due task has waited (0: none waits)."
    )
    oldest = queue["oldest"]
    age.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
    yield depth
    yield age
    xmpp = GaugeMetricFamily("bridge_xmpp_occupants", "XMPP users present in bridged rooms.")
    xmpp.add_metric([], float(occupants))
    yield xmpp


_state_lock = threading.Lock()
_state_registered = False


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The exposition text of this process and its content type (call from a thread)."""
    global _state_registered
    with _state_lock:
        if registry is REGISTRY and not _state_registered:
            # Registered on the first scrape, not at import: importing defines, nothing more.
            REGISTRY.register(StateCollector())
            _state_registered = True
    return generate_latest(registry), CONTENT_TYPE_LATEST
