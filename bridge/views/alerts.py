"""`/api/alerts/rules`: alert rules over HTTP (the admin edits the same rows)."""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bridge.access import can_admin, can_command
from bridge.auth import api_user
from bridge.exceptions import AuthRequired, Forbidden, InvalidInput, MethodNotAllowed, NotFound
from bridge.models import Room
from bridge.selectors import device_get, room_get
from bridge.services.alerts import RULE_FIELDS, alert_rule_create, alert_rule_delete
from bridge.telemetry_selectors import alert_rule_json, alert_rules_visible
from bridge.views.api import allow, authenticated_json_body, json_errors

logger = logging.getLogger(__name__)


def _rooms(slugs: object, user: Any) -> list[Room]:
    if not isinstance(slugs, list) or not slugs or not all(isinstance(s, str) for s in slugs):
        raise InvalidInput("'notify' is a list of room names.", code="invalid_rule")
    rooms = [room_get(slug=s) for s in slugs]
    for room in rooms:
        if not can_admin(user, room):
            raise Forbidden(f"Only admins of {room.slug!r} may add rules that tell it.")
    return rooms


@csrf_exempt  # session callers are CSRF-checked in api_user; token callers need no CSRF
@allow("GET", "HEAD", "POST")
@json_errors
def rules(request: HttpRequest) -> HttpResponse:
    user = api_user(request)
    if request.method != "POST":
        if not user.is_authenticated:
            raise AuthRequired("Sign in or send 'Authorization: Token <key>' to list rules.")
        return JsonResponse({"rules": [alert_rule_json(r) for r in alert_rules_visible(user)]})
    body = authenticated_json_body(request, user, "add alert rules")
    notify = _rooms(body.get("notify"), user)
    device = room = None
    if body.get("device") is not None:
        device = device_get(device_id=str(body["device"]))
        if not can_command(user, device):
            raise Forbidden(f"You have no tie to device {device.device_id!r}.",
                            code="forbidden_device")
    if body.get("room") is not None:
        room = room_get(slug=str(body["room"]))
        if not can_admin(user, room):
            raise Forbidden(f"Only admins of {room.slug!r} may watch its devices.")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("A rule needs a 'name'.", code="invalid_rule")
    fields = {k: body[k] for k in RULE_FIELDS if k in body}
    rule = alert_rule_create(name=name, notify=notify, device=device, room=room, **fields)
    logger.info("alert rule %s (%s) added by %s", rule.pk, rule.name, user)
    return JsonResponse({"rule": alert_rule_json(rule)}, status=201)


@csrf_exempt
@allow("GET", "HEAD", "DELETE")
@json_errors
def rule(request: HttpRequest, rule_id: int) -> HttpResponse:
    user = api_user(request)
    if not user.is_authenticated:
        raise AuthRequired("Sign in or send 'Authorization: Token <key>'.")
    found = next((r for r in alert_rules_visible(user) if r.pk == rule_id), None)
    if found is None:
        raise NotFound(f"No alert rule {rule_id}.", code="unknown_rule")
    if request.method == "DELETE":
        if not all(can_admin(user, r) for r in found.notify_rooms.all()):
            raise Forbidden("Only admins of every room a rule tells may delete it.")
        alert_rule_delete(rule=found)
        logger.info("alert rule %s deleted by %s", rule_id, user)
        return HttpResponse(status=204)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed("Use GET or DELETE.")
    return JsonResponse({"rule": alert_rule_json(found)})
