"""Rolling telemetry up: each stored reading into its windows, exactly once, and pruning.

A batch of readings is claimed, added to its rollups, marked rolled up and
evaluated against alert rules in one transaction. Claiming skips rows another
worker holds (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the IMMEDIATE
transaction serialises writers), so several workers never add one reading
twice, and a worker killed mid-batch rolls everything back: the readings are
still pending for whoever comes next.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from bridge import layer
from bridge.envelope import Envelope
from bridge.metrics import units_of
from bridge.models import Device, DeviceMetric, Telemetry, TelemetryRollup
from bridge.services.alerts import alerts_for_readings
from bridge.services.tasks import tasks_prune

logger = logging.getLogger(__name__)

# Rows per INSERT ... ON CONFLICT statement (10 parameters each; SQLite's old limit is 999).
UPSERT_CHUNK = 90


def windows() -> dict[str, int]:
    """Window name -> length in seconds ("1m" and "1h" by default; shorter in tests)."""
    return {"1m": settings.TELEMETRY_WINDOW_SHORT, "1h": settings.TELEMETRY_WINDOW_LONG}


def window_start(at: datetime, seconds: int) -> datetime:
    """The start of the fixed window of `seconds` that holds `at` (aligned on the epoch)."""
    epoch = int(at.timestamp() // seconds) * seconds
    return datetime.fromtimestamp(epoch, tz=UTC)


@dataclass
class _Agg:
    count: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    sum: float = 0.0
    last: float = 0.0
    last_at: datetime | None = None

    def add(self, value: float, at: datetime) -> None:
        self.count += 1
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.sum += value
        if self.last_at is None or at >= self.last_at:
            self.last, self.last_at = value, at


@dataclass
class RollupResult:
    """What one batch did, for the consumer to tell the world after the commit."""

    readings: int = 0
    alerts: list[Envelope] = field(default_factory=list)
    # device id -> metric -> {"value", "at", "unit"}: the devices panels' live update.
    latest: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    # device id -> slugs of its rooms, where the live update goes.
    rooms: dict[str, list[str]] = field(default_factory=dict)


def telemetry_roll_up(*, limit: int | None = None) -> RollupResult:
    """Claim up to `limit` pending readings and roll them up, in one transaction."""
    limit = limit or settings.TELEMETRY_BATCH
    result = RollupResult()
    with transaction.atomic():
        rows = list(
            Telemetry.objects.select_for_update(skip_locked=True)
            .filter(rolled_up=False)
            .select_related("device")
            .order_by("id")[:limit]
        )
        if not rows:
            return result
        rows.sort(key=lambda r: (r.received, r.pk))
        aggs: dict[tuple[int, str, str, datetime], _Agg] = defaultdict(_Agg)
        latest: dict[tuple[int, str], tuple[float, datetime, str]] = {}
        spans = windows()
        for row in rows:
            metrics = row.metrics if isinstance(row.metrics, dict) else {}
            units = units_of(row.data, metrics) if isinstance(row.data, dict) else {}
            for metric, value in metrics.items():
                for period, seconds in spans.items():
                    aggs[(row.device_id, metric, period, window_start(row.received, seconds))].add(
                        value, row.received
                    )
                latest[(row.device_id, metric)] = (value, row.received, units.get(metric, ""))
                device = result.latest.setdefault(row.device.device_id, {})
                device[metric] = {
                    "value": value, "at": row.received.isoformat(), "unit": units.get(metric, ""),
                }
        _upsert_rollups(aggs)
        _upsert_latest(latest)
        Telemetry.objects.filter(pk__in=[r.pk for r in rows]).update(rolled_up=True)
        result.alerts = alerts_for_readings(rows)
        result.readings = len(rows)
        result.rooms = _room_slugs({r.device_id: r.device.device_id for r in rows})
    return result


def _room_slugs(devices: dict[int, str]) -> dict[str, list[str]]:
    slugs: dict[str, set[str]] = defaultdict(set)
    for through in (Device.post_rooms.through, Device.listen_rooms.through):
        for device_pk, slug in through.objects.filter(device_id__in=list(devices)).values_list(
            "device_id", "room__slug"
        ):
            slugs[devices[device_pk]].add(slug)
    return {device: sorted(rooms) for device, rooms in slugs.items()}


def _vendor() -> tuple[str, str]:
    return ("LEAST", "GREATEST") if connection.vendor == "postgresql" else ("MIN", "MAX")


def _execute_upsert(table: str, columns: list[str], conflict: list[str], updates: str,
                    rows: list[list[object]]) -> None:
    q = connection.ops.quote_name
    cols = ", ".join(q(c) for c in columns)
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    with connection.cursor() as cursor:
        for i in range(0, len(rows), UPSERT_CHUNK):
            chunk = rows[i : i + UPSERT_CHUNK]
            sql = (
                f"INSERT INTO {q(table)} ({cols}) VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT ({', '.join(q(c) for c in conflict)}) DO UPDATE SET {updates}"
            )
            params: list[Any] = [value for row in chunk for value in row]
            cursor.execute(sql, params)


def _upsert_rollups(aggs: dict[tuple[int, str, str, datetime], _Agg]) -> None:
    """Add each aggregate to its window's row (created if new): count and sum add up."""
    q = connection.ops.quote_name
    t = q(TelemetryRollup._meta.db_table)
    least, greatest = _vendor()
    dt = connection.ops.adapt_datetimefield_value
    updates = ", ".join([
        f"{q('count')} = {t}.{q('count')} + EXCLUDED.{q('count')}",
        f"{q('min')} = {least}({t}.{q('min')}, EXCLUDED.{q('min')})",
        f"{q('max')} = {greatest}({t}.{q('max')}, EXCLUDED.{q('max')})",
        f"{q('sum')} = {t}.{q('sum')} + EXCLUDED.{q('sum')}",
        f"{q('last')} = CASE WHEN EXCLUDED.{q('last_at')} >= {t}.{q('last_at')} "
        f"THEN EXCLUDED.{q('last')} ELSE {t}.{q('last')} END",
        f"{q('last_at')} = {greatest}({t}.{q('last_at')}, EXCLUDED.{q('last_at')})",
    ])
    rows: list[list[object]] = [
        [device, metric, period, dt(start), a.count, a.min, a.max, a.sum, a.last, dt(a.last_at)]
        for (device, metric, period, start), a in aggs.items()
    ]
    _execute_upsert(
        TelemetryRollup._meta.db_table,
        ["device_id", "metric", "period", "start", "count", "min", "max", "sum", "last", "last_at"],
        ["device_id", "metric", "period", "start"],
        updates,
        rows,
    )


def _upsert_latest(latest: dict[tuple[int, str], tuple[float, datetime, str]]) -> None:
    """Each metric's newest value (a reading older than the stored one changes nothing)."""
    q = connection.ops.quote_name
    t = q(DeviceMetric._meta.db_table)
    dt = connection.ops.adapt_datetimefield_value
    newer = f"EXCLUDED.{q('at')} >= {t}.{q('at')}"
    updates = ", ".join([
        f"{q('value')} = CASE WHEN {newer} THEN EXCLUDED.{q('value')} ELSE {t}.{q('value')} END",
        f"{q('unit')} = CASE WHEN EXCLUDED.{q('unit')} <> '' THEN EXCLUDED.{q('unit')} "
        f"ELSE {t}.{q('unit')} END",
        f"{q('at')} = CASE WHEN {newer} THEN EXCLUDED.{q('at')} ELSE {t}.{q('at')} END",
    ])
    rows: list[list[object]] = [
        [device, metric, value, dt(at), unit] for (device, metric), (value, at, unit) in latest.items()
    ]
    _execute_upsert(
        DeviceMetric._meta.db_table, ["device_id", "metric", "value", "at", "unit"],
        ["device_id", "metric"], updates, rows,
    )


async def atelemetry_wake(*, status: bool = False) -> None:
    """Nudge a telemetry worker (`status`: a device's status changed, judge `silent` rules
    now). Best effort (bounded, skipped while Redis is away): the sweep finds what a lost
    wake-up left."""
    message = {"type": "telemetry.wake", "status": status}
    if not await layer.send(settings.BRIDGE_TELEMETRY_CHANNEL, message):
        logger.debug("could not wake the telemetry workers; their sweep will")


def telemetry_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete raw readings, rollups and finished tasks past their retention (0 keeps)."""
    now = now or timezone.now()
    deleted: dict[str, int] = {}
    if settings.TELEMETRY_KEEP_RAW_HOURS:
        cutoff = now - timedelta(hours=settings.TELEMETRY_KEEP_RAW_HOURS)
        # Only rolled-up readings: a backlog is never lost to retention.
        deleted["raw"], _ = Telemetry.objects.filter(rolled_up=True, received__lt=cutoff).delete()
    for period, hours in (
        ("1m", settings.TELEMETRY_KEEP_SHORT_HOURS), ("1h", settings.TELEMETRY_KEEP_LONG_HOURS)
    ):
        if hours:
            cutoff = now - timedelta(hours=hours)
            deleted[period], _ = TelemetryRollup.objects.filter(
                period=period, start__lt=cutoff
            ).delete()
    deleted["tasks"] = tasks_prune(now=now)
    if any(deleted.values()):
        logger.info("retention deleted %s", deleted)
    return deleted
