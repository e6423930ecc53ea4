"""Devices over HTTP: commands to a device, its telemetry rollups, a room's devices."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from bridge.access import can_command, can_read
from bridge.auth import api_user
from bridge.exceptions import Forbidden, InvalidInput, RoomNotFound
from bridge.selectors import device_get, room_get
from bridge.services.devices import device_command_create, device_commands_wake
from bridge.services.identities import identity_for_user
from bridge.telemetry_selectors import (
    device_get_readable,
    room_devices,
    telemetry_series,
    window_seconds,
)
from bridge.views.api import allow, authenticated_json_body, json_errors

logger = logging.getLogger(__name__)


@csrf_exempt  # session callers are CSRF-checked in api_user; token callers need no CSRF
@allow("POST")
@json_errors
def commands(request: HttpRequest, device: str) -> HttpResponse:
    """Body `{"text": "..."}`; 202: recorded, published once on devices/<device>/commands.

    404 for an unknown device, 403 (`forbidden_device`) without a tie to it (`bridge.access`).
    """
    user = api_user(request)
    body = authenticated_json_body(request, user, "command a device")
    target = device_get(device_id=device)
    if not can_command(user, target):
        raise Forbidden(
            f"You have no tie to device {device!r}: be a member of a room it is in, "
            "or one of its operators.", code="forbidden_device",
        )
    with transaction.atomic():
        command = device_command_create(
            device_id=device, text=body.get("text", ""), sender=identity_for_user(user), origin="api"
        )
        transaction.on_commit(device_commands_wake)
    logger.info("command %s for %s recorded by %s", command.pk, device, user)
    return JsonResponse(
        {
            "command": {
                "id": command.pk,
                "device": device,
                "text": command.text,
                "created": command.created.isoformat(),
            }
        },
        status=202,
    )


def _since(request: HttpRequest) -> datetime | None:
    raw = request.GET.get("since")
    if not raw:
        return None
    try:
        parsed = parse_datetime(raw)
    except ValueError:
        parsed = None
    if parsed is None:
        raise InvalidInput(
            "'since' must be an ISO 8601 date and time, e.g. 2026-11-22T10:00:00Z.",
            code="invalid_since",
        )
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@allow("GET", "HEAD")
@json_errors
def telemetry(request: HttpRequest, device: str) -> HttpResponse:
    """`?metric=...&window=1m|1h&since=ISO`: the metric's rollups, oldest first."""
    user = api_user(request)
    target = device_get_readable(actor=user, device_id=device)
    window = request.GET.get("window", "1m")
    metric = request.GET.get("metric", "")
    rollups = telemetry_series(device=target, metric=metric, window=window, since=_since(request))
    return JsonResponse({
        "device": target.device_id, "metric": metric, "window": window,
        "seconds": window_seconds(window), "rollups": rollups,
    })


@allow("GET", "HEAD")
@json_errors
def room_devices_list(request: HttpRequest, room: str) -> HttpResponse:
    """The room's devices with status, newest readings (value, unit, at) and firing alerts."""
    user = api_user(request)
    room_obj = room_get(slug=room)
    if not can_read(user, room_obj):
        raise RoomNotFound(f"No room {room!r}.")
    return JsonResponse({"room": room_obj.slug, "devices": room_devices(room=room_obj)})
