"""Reads of devices' telemetry: a room's devices panel, rollup series, alert rules.

Who may read what is `bridge.access`: a device's readings are readable by whoever
may read one of the rooms the device posts into or listens to.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from bridge.access import Actor, readable_rooms
from bridge.exceptions import InvalidInput, NotFound
from bridge.models import AlertRule, AlertState, Device, DeviceMetric, Room, TelemetryRollup
from bridge.selectors import device_get
from bridge.services.telemetry import windows

MAX_ROLLUPS = 1500
# Without `since`: 60 windows back (the last hour of 1m windows, 2.5 days of 1h ones).
DEFAULT_SPAN = 60


def device_readable(actor: Actor, device: Device) -> bool:
    return readable_rooms(actor).filter(
        Q(posting_devices=device) | Q(listening_devices=device)
    ).exists()


def room_devices_qs(room: Room) -> QuerySet[Device]:
    return Device.objects.filter(Q(post_rooms=room) | Q(listen_rooms=room)).distinct()


def room_devices(*, room: Room) -> list[dict[str, Any]]:
    """Each device of the room with its status, newest readings and firing alerts (3 queries)."""
    devices = list(room_devices_qs(room).order_by("device_id"))
    pks = [d.pk for d in devices]
    readings: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for m in DeviceMetric.objects.filter(device_id__in=pks).order_by("metric"):
        readings[m.device_id][m.metric] = {"value": m.value, "unit": m.unit, "at": m.at.isoformat()}
    alerts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    firing = AlertState.objects.filter(
        device_id__in=pks, state__in=[AlertState.State.FIRING, AlertState.State.CLEARING]
    ).select_related("rule")
    for s in firing:
        alerts[s.device_id].append(
            {"rule": s.rule_id, "name": s.rule.name, "metric": s.rule.metric,
             "since": s.since.isoformat()}
        )
    return [
        {
            "device": d.device_id,
            "status": d.status or "unknown",
            "last_seen": d.last_seen.isoformat() if d.last_seen else None,
            "readings": readings.get(d.pk, {}),
            "alerts": alerts.get(d.pk, []),
        }
        for d in devices
    ]


def window_seconds(name: str) -> int:
    spans = windows()
    if name not in spans:
        raise InvalidInput(
            f"'window' must be one of {', '.join(spans)}.", code="invalid_window"
        )
    return spans[name]


def telemetry_series(
    *, device: Device, metric: str, window: str, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The rollups of one metric from `since` on, oldest first (at most MAX_ROLLUPS)."""
    if not metric or len(metric) > 200:
        raise InvalidInput("Give the metric: ?metric=<name>, e.g. temperature or env.temp.",
                           code="invalid_metric")
    seconds = window_seconds(window)
    since = since or timezone.now() - timedelta(seconds=seconds * DEFAULT_SPAN)
    rows = TelemetryRollup.objects.filter(
        device=device, metric=metric, period=window, start__gte=since - timedelta(seconds=seconds)
    ).order_by("start")[:MAX_ROLLUPS]
    return [
        {"start": r.start.isoformat(), "count": r.count, "min": r.min, "max": r.max,
         "mean": r.mean, "sum": r.sum, "last": r.last, "last_at": r.last_at.isoformat()}
        for r in rows
        if r.start + timedelta(seconds=seconds) > since
    ]


def device_get_readable(*, actor: Actor, device_id: str) -> Device:
    """The device, if this actor may read its telemetry; 404 otherwise (never says it exists)."""
    device = device_get(device_id=device_id)
    if not device_readable(actor, device):
        raise NotFound(f"Unknown device {device_id!r}.", code="unknown_device")
    return device


def alert_rule_json(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": rule.pk, "name": rule.name,
        "device": rule.device.device_id if rule.device else None,
        "room": rule.room.slug if rule.room else None,
        "metric": rule.metric, "condition": rule.condition, "threshold": rule.threshold,
        "low": rule.low, "high": rule.high, "silent_seconds": rule.silent_seconds,
        "hysteresis": rule.hysteresis, "hold_seconds": rule.hold_seconds,
        "notify": sorted(r.slug for r in rule.notify_rooms.all()), "enabled": rule.enabled,
    }


def alert_rules_visible(actor: Actor) -> list[AlertRule]:
    """Rules that tell a room this actor may read."""
    rooms = readable_rooms(actor)
    return list(
        AlertRule.objects.filter(notify_rooms__in=rooms).distinct()
        .select_related("device", "room").prefetch_related("notify_rooms").order_by("name")
    )
