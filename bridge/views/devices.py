"""`POST /api/devices/<device>/commands`: send a command to an MQTT device."""

from __future__ import annotations

import logging

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bridge.access import can_command
from bridge.auth import api_user
from bridge.exceptions import Forbidden
from bridge.selectors import device_get
from bridge.services.devices import device_command_create, device_commands_wake
from bridge.services.identities import identity_for_user
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
