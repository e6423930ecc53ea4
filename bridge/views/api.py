"""The JSON HTTP API of the contract."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bridge import jsontext
from bridge.access import check_chat_command
from bridge.auth import api_user
from bridge.envelope import message_envelope
from bridge.exceptions import (
    AuthRequired,
    BridgeError,
    InvalidInput,
    MethodNotAllowed,
    RateLimited,
    RoomNotFound,
    TooLarge,
)
from bridge.health import HEALTH
from bridge.instruments import refused
from bridge.probes import probe_channel_layer, probe_database
from bridge.ratelimit import throttle
from bridge.selectors import message_history, room_get, room_list, room_visible
from bridge.services.identities import identity_for_user
from bridge.services.messages import message_post

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def error_response(exc: BridgeError) -> JsonResponse:
    refused("api", exc.code)
    response = JsonResponse({"error": exc.as_dict()}, status=exc.status)
    if isinstance(exc, RateLimited):
        response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def allow(*methods: str) -> Callable[[View], View]:
    """Like require_http_methods, but the refusal is the contract's JSON error (405)."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return error_response(MethodNotAllowed(f"Use {' or '.join(methods)}."))
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def json_errors(view: View) -> View:
    """Turn the bridge's errors into the contract's JSON errors, with a log line."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except BridgeError as exc:
            logger.info("%s %s refused: %s %s", request.method, request.path, exc.code, exc.detail)
            return error_response(exc)

    return wrapper


def authenticated_json_body(request: HttpRequest, user: Any, action: str) -> dict[str, Any]:
    """The JSON object a signed-in caller posted: size-checked and decoded, or a clear error."""
    if not user.is_authenticated:
        raise AuthRequired(f"Sign in or send 'Authorization: Token <key>' to {action}.")
    throttle("api", f"user:{user.pk}")  # before reading: a flood of junk costs little too
    body = jsontext.loads(_body_bytes(request), what="The body")
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.", code="invalid_json")
    return body


def _body_bytes(request: HttpRequest) -> bytes:
    """At most BRIDGE_MAX_FRAME bytes of the body: a larger one is refused before it is read.

    The declared length is checked first, so a 5 MiB body is a 413 here rather than
    Django's RequestDataTooBig; a body without a length is read one byte past the limit.
    """
    limit = settings.BRIDGE_MAX_FRAME
    refusal = TooLarge(f"Bodies are limited to {limit} bytes.")
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise refusal
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise refusal
    return raw


def _room_json(room: Any) -> dict[str, Any]:
    return {
        "slug": room.slug,
        "title": room.display_title,
        "private": room.private,
        "last_seq": room.last_seq,
        "message_count": room.message_count,
        "last_message_at": room.last_message_at.isoformat() if room.last_message_at else None,
        "senders_24h": room.senders_24h,
    }


@allow("GET", "HEAD")
@json_errors
def rooms(request: HttpRequest) -> HttpResponse:
    user = api_user(request)
    return JsonResponse({"rooms": [_room_json(r) for r in room_list(user=user)]})


def _int_param(request: HttpRequest, name: str, default: int | None) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    return jsontext.whole_number(raw, what=f"'{name}'", code=f"invalid_{name}")


@csrf_exempt  # session callers are CSRF-checked in api_user; token callers need no CSRF
@json_errors
def messages(request: HttpRequest, room: str) -> HttpResponse:
    user = api_user(request)
    room_obj = room_get(slug=room)
    if not room_visible(room_obj, user):
        raise RoomNotFound(f"No room {room!r}.")
    if request.method == "GET":
        history = message_history(
            room=room_obj,
            after=_int_param(request, "after", None),
            before=_int_param(request, "before", None),
            limit=_int_param(request, "limit", 50) or 0,  # given as 0: refused by the selector
        )
        return JsonResponse({"messages": [message_envelope(m, room_slug=room_obj.slug) for m in history]})
    if request.method != "POST":
        raise MethodNotAllowed("Use GET or POST.")
    body = authenticated_json_body(request, user, "post")
    if isinstance(body.get("text"), str):
        check_chat_command(user, room_obj, body["text"])
    result = message_post(
        room=room_obj,
        sender=identity_for_user(user),
        origin="api",
        text=body.get("text", ""),
        data=body.get("data"),
        client_key=body.get("client_id"),
    )
    response = JsonResponse(result.envelope, status=201)
    if not result.created:
        response["Idempotent-Replayed"] = "true"
    return response


@allow("GET", "HEAD")
def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: 200 as long as this process answers HTTP (it serves history and stores posts
    even while Redis is away); whether its dependencies answer is `/readyz`."""
    return JsonResponse({"status": "ok"})


@allow("GET", "HEAD")
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready: the database and the channel layer probed now, plus this process's loops;
    503 with each failing check's reason while any critical one fails."""
    probe_database()
    probe_channel_layer()
    response = JsonResponse(HEALTH.as_json(), status=200 if HEALTH.ready() else 503)
    # HEALTH logs each check once when it fails and once when it recovers; Django would log
    # an ERROR for every probe's 503 meanwhile (one every few seconds per load balancer).
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
