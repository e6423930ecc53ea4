"""Alert rules, evaluated by the telemetry worker: one message when firing starts, one when it ends.

Each (rule, device) is a named state machine (`AlertState.State`):

    OK --breach--> PENDING --breach held hold_seconds--> FIRING   (posts "firing")
    FIRING --recovered--> CLEARING --recovered held hold_seconds--> OK (posts "cleared")

"Recovered" is the breach's opposite moved back by `hysteresis` (above 30 with
hysteresis 1 fires over 30 and clears at 29 or less), so a value hovering at
the line does not flap. With hold_seconds 0, PENDING and CLEARING are skipped.
A `silent` rule breaches when the device's Last Will (or its own status) says
offline, or when its newest reading is older than `silent_seconds`.

Runs inside the rollup's transaction: the state change and its message commit
together or not at all.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from bridge.envelope import Envelope
from bridge.exceptions import InvalidInput
from bridge.models import (
    AlertRule,
    AlertState,
    Device,
    DeviceMetric,
    Identity,
    Room,
    Telemetry,
)
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import message_store

logger = logging.getLogger(__name__)

State = AlertState.State
Condition = AlertRule.Condition
ALERTS_SENDER = "alerts"


RULE_FIELDS = ("metric", "condition", "threshold", "low", "high", "silent_seconds",
               "hysteresis", "hold_seconds", "enabled")


def alert_rule_create(
    *, name: str, notify: list[Room], device: Device | None = None, room: Room | None = None,
    **fields: object,
) -> AlertRule:
    """A rule for one device or every device of `room`, telling `notify`; checked like the admin."""
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown rule fields: {', '.join(sorted(unknown))}.", code="invalid_rule")
    if not notify:
        raise InvalidInput("A rule tells at least one room.", code="invalid_rule")
    rule = AlertRule(name=name, device=device, room=room, **fields)
    try:
        rule.full_clean()
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), code="invalid_rule") from exc
    with transaction.atomic():
        rule.save()
        rule.notify_rooms.set(notify)
    return rule


def alert_rule_delete(*, rule: AlertRule) -> None:
    """Delete a rule and its states (a firing alert stops without a "cleared" message)."""
    AlertRule.objects.filter(pk=rule.pk).delete()


def _breached(rule: AlertRule, value: float) -> bool:
    if rule.condition == Condition.ABOVE:
        return value > (rule.threshold or 0.0)
    if rule.condition == Condition.BELOW:
        return value < (rule.threshold or 0.0)
    assert rule.low is not None and rule.high is not None
    return value < rule.low or value > rule.high


def _recovered(rule: AlertRule, value: float) -> bool:
    h = rule.hysteresis
    if rule.condition == Condition.ABOVE:
        return value <= (rule.threshold or 0.0) - h
    if rule.condition == Condition.BELOW:
        return value >= (rule.threshold or 0.0) + h
    assert rule.low is not None and rule.high is not None
    return rule.low + h <= value <= rule.high - h


def step(
    state: AlertState, rule: AlertRule, *, breached: bool, recovered: bool, at: datetime
) -> str | None:
    """Move the machine for one observation; returns "firing" or "cleared" on a change."""
    hold = timedelta(seconds=rule.hold_seconds)
    current = state.state
    if current in (State.OK, State.PENDING):
        if not breached:
            state.state = State.OK
            return None
        if current == State.OK:
            state.state, state.since = State.PENDING, at
        if at - state.since >= hold:
            state.state, state.since = State.FIRING, at
            return "firing"
        return None
    # FIRING or CLEARING
    if not recovered:
        state.state = State.FIRING
        return None
    if current == State.FIRING:
        state.state, state.since = State.CLEARING, at
    if at - state.since >= hold:
        state.state, state.since = State.OK, at
        return "cleared"
    return None


def _device_rooms(device_pks: Iterable[int]) -> dict[int, set[int]]:
    rooms: dict[int, set[int]] = defaultdict(set)
    pks = list(device_pks)
    for through in (Device.post_rooms.through, Device.listen_rooms.through):
        for device_id, room_id in through.objects.filter(device_id__in=pks).values_list(
            "device_id", "room_id"
        ):
            rooms[device_id].add(room_id)
    return rooms


def _room_devices(room_pks: Iterable[int]) -> dict[int, set[int]]:
    devices: dict[int, set[int]] = defaultdict(set)
    pks = list(room_pks)
    for through in (Device.post_rooms.through, Device.listen_rooms.through):
        for device_id, room_id in through.objects.filter(room_id__in=pks).values_list(
            "device_id", "room_id"
        ):
            devices[room_id].add(device_id)
    return devices


def _states(pairs: set[tuple[int, int]], at: datetime) -> dict[tuple[int, int], AlertState]:
    """The state rows of (rule, device) pairs, locked, created where missing."""
    if not pairs:
        return {}
    rule_ids = {r for r, _ in pairs}
    device_ids = {d for _, d in pairs}
    AlertState.objects.bulk_create(
        [AlertState(rule_id=r, device_id=d, since=at, updated=at) for r, d in pairs],
        ignore_conflicts=True,
    )
    rows = AlertState.objects.select_for_update().filter(
        rule_id__in=rule_ids, device_id__in=device_ids
    )
    return {(s.rule_id, s.device_id): s for s in rows if (s.rule_id, s.device_id) in pairs}


def alerts_for_readings(rows: list[Telemetry]) -> list[Envelope]:
    """Evaluate the value rules that concern these readings (sorted by time); messages posted."""
    device_pks = {r.device_id for r in rows}
    device_rooms = _device_rooms(device_pks)
    room_pks = set().union(*device_rooms.values()) if device_rooms else set()
    rules = list(
        AlertRule.objects.filter(enabled=True)
        .exclude(condition=Condition.SILENT)
        .filter(Q(device_id__in=device_pks) | Q(room_id__in=room_pks))
        .prefetch_related("notify_rooms")
    )
    if not rules:
        return []
    targets: dict[int, list[AlertRule]] = defaultdict(list)
    for rule in rules:
        for device in device_pks:
            if rule.device_id == device or rule.room_id in device_rooms.get(device, ()):
                targets[device].append(rule)
    pairs = {(rule.pk, d) for d, rs in targets.items() for rule in rs}
    states = _states(pairs, rows[0].received)
    changed: dict[tuple[int, int], AlertState] = {}
    envelopes: list[Envelope] = []
    for row in rows:
        for rule in targets.get(row.device_id, ()):
            value = row.metrics.get(rule.metric) if isinstance(row.metrics, dict) else None
            if value is None:
                continue
            state = states[(rule.pk, row.device_id)]
            if row.received < state.updated:
                continue  # another worker already judged a newer reading
            change = step(state, rule, breached=_breached(rule, value),
                          recovered=_recovered(rule, value), at=row.received)
            state.value, state.updated = value, row.received
            changed[(rule.pk, row.device_id)] = state
            if change is not None:
                envelopes += _announce(rule, row.device, change, value=value, at=row.received)
    _save(changed.values())
    return envelopes


def alerts_check_silence(*, now: datetime | None = None) -> list[Envelope]:
    """Evaluate every `silent` rule against its devices' status and newest reading."""
    now = now or timezone.now()
    rules = list(
        AlertRule.objects.filter(enabled=True, condition=Condition.SILENT).prefetch_related(
            "notify_rooms"
        )
    )
    if not rules:
        return []
    room_devices = _room_devices({r.room_id for r in rules if r.room_id is not None})
    targets = {
        rule.pk: ({rule.device_id} if rule.device_id is not None else room_devices.get(rule.room_id or 0, set()))
        for rule in rules
    }
    device_pks = set().union(*targets.values())
    devices = Device.objects.in_bulk(list(device_pks))
    newest = dict(
        DeviceMetric.objects.filter(device_id__in=device_pks)
        .values("device_id").annotate(at=Max("at")).values_list("device_id", "at")
    )
    states = _states({(r.pk, d) for r in rules for d in targets[r.pk]}, now)
    envelopes: list[Envelope] = []
    changed: list[AlertState] = []
    for rule in rules:
        quiet = timedelta(seconds=rule.silent_seconds or 0)
        for device_pk in targets[rule.pk]:
            device = devices.get(device_pk)
            if device is None:
                continue
            last = newest.get(device_pk)
            offline = device.status == "offline"
            stale = last is not None and now - last > quiet
            fresh = last is not None and now - last <= quiet
            state = states[(rule.pk, device_pk)]
            before = (state.state, state.since)
            change = step(state, rule, breached=offline or stale,
                          recovered=not offline and fresh, at=now)
            state.updated = now
            if (state.state, state.since) != before:
                changed.append(state)
            if change is not None:
                reason = "offline" if offline else "silent"
                envelopes += _announce(rule, device, change, value=None, at=now, reason=reason)
    _save(changed)
    return envelopes


def _save(states: Iterable[AlertState]) -> None:
    for state in states:
        AlertState.objects.filter(pk=state.pk).update(
            state=state.state, since=state.since, value=state.value, updated=state.updated
        )


def _describe(rule: AlertRule) -> str:
    if rule.condition == Condition.ABOVE:
        return f"above {rule.threshold:g}"
    if rule.condition == Condition.BELOW:
        return f"below {rule.threshold:g}"
    if rule.condition == Condition.OUTSIDE:
        return f"outside {rule.low:g}..{rule.high:g}"
    return f"silent for {rule.silent_seconds} s"


def _announce(
    rule: AlertRule, device: Device, change: str, *, value: float | None, at: datetime,
    reason: str = "",
) -> list[Envelope]:
    """Post the alert into every room the rule tells (the message service fans it out)."""
    name = device.device_id
    if rule.condition == Condition.SILENT:
        what = "is offline" if reason == "offline" else f"has sent nothing for {rule.silent_seconds} s"
        text = (f"ALERT {name} {what} (rule {rule.name!r})" if change == "firing"
                else f"CLEARED {name} is reporting again (rule {rule.name!r})")
    else:
        text = (f"ALERT {name} {rule.metric} = {value:g} is {_describe(rule)} (rule {rule.name!r})"
                if change == "firing"
                else f"CLEARED {name} {rule.metric} = {value:g} is back (rule {rule.name!r})")
    data = {
        "alert": {
            "rule": rule.pk, "name": rule.name, "device": name, "metric": rule.metric,
            "condition": rule.condition, "state": change, "value": value,
            "threshold": rule.threshold, "low": rule.low, "high": rule.high,
            "silent_seconds": rule.silent_seconds, "reason": reason or None,
            "at": at.isoformat(),
        }
    }
    sender = identity_get_or_create(kind=Identity.Kind.SYSTEM, name=ALERTS_SENDER)
    rooms: list[Room] = sorted(rule.notify_rooms.all(), key=lambda r: r.pk)
    logger.info("alert %s %s for %s", rule.name, change, name)
    return [
        message_store(room=room, sender=sender, origin="system", text=text, data=data).envelope
        for room in rooms
    ]
