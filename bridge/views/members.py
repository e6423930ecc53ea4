"""`/api/rooms/<room>/members`: a room's admins list, add and remove its members."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bridge.access import can_admin, can_read, members_list
from bridge.auth import api_user
from bridge.exceptions import AuthRequired, Forbidden, InvalidInput, NotFound, RoomNotFound
from bridge.models import Room, RoomMember
from bridge.selectors import room_get
from bridge.services.members import MemberRef, member_add, member_remove
from bridge.views.api import allow, authenticated_json_body, json_errors

KINDS = ("user", "group", "jid", "device")


def _admin_room(request: HttpRequest, room: str) -> tuple[Room, Any]:
    """(room, caller) if the caller administers it: 404 when they may not even read it, else 403."""
    user = api_user(request)
    room_obj = room_get(slug=room)
    if not can_read(user, room_obj):
        raise RoomNotFound(f"No room {room!r}.")
    if not user.is_authenticated:
        raise AuthRequired("Sign in or send 'Authorization: Token <key>' to manage members.")
    if not can_admin(user, room_obj):
        raise Forbidden("Only the room's admins manage its members.", code="not_room_admin")
    return room_obj, user


def _ref(kind: str, name: str) -> MemberRef:
    if kind not in KINDS:
        raise NotFound(f"Members are {', '.join(KINDS)}, not {kind!r}.", code="invalid_member")
    return MemberRef(**{"username" if kind == "user" else kind: name})


@csrf_exempt  # session callers are CSRF-checked in api_user; token callers need no CSRF
@allow("GET", "HEAD", "POST")
@json_errors
def members(request: HttpRequest, room: str) -> HttpResponse:
    """GET: `{"members": [{"kind", "name", "role", ...}]}`. POST `{"user"|"group"|"jid"|"device":
    name, "role"?: "member"|"admin", "jid"?: with "user", that user's JID}`: 201."""
    room_obj, user = _admin_room(request, room)
    if request.method == "POST":
        body = authenticated_json_body(request, user, "manage members")
        named = [k for k in KINDS if k in body and not (k == "jid" and "user" in body)]
        if len(named) != 1 or not isinstance(body[named[0]], str):
            raise InvalidInput(
                "Name one member: {\"user\"|\"group\"|\"jid\"|\"device\": \"name\"}.",
                code="invalid_member",
            )
        role = body.get("role", RoomMember.Role.MEMBER)
        jid = body.get("jid", "") if "user" in body else ""
        if not isinstance(role, str) or not isinstance(jid, str):
            raise InvalidInput("'role' and 'jid' are strings.", code="invalid_member")
        member_add(room=room_obj, member=_ref(named[0], body[named[0]]), role=role, jid=jid)
        status = 201
    else:
        status = 200
    return JsonResponse(
        {"members": [m.as_dict() for m in members_list(room=room_obj)]}, status=status
    )


@csrf_exempt
@allow("DELETE")
@json_errors
def member(request: HttpRequest, room: str, kind: str, name: str) -> HttpResponse:
    """DELETE `/api/rooms/<room>/members/<kind>/<name>`: 204, or 404 `not_a_member`."""
    room_obj, _ = _admin_room(request, room)
    if not member_remove(room=room_obj, member=_ref(kind, name)):
        raise NotFound(f"{kind} {name!r} is not a member of {room!r}.", code="not_a_member")
    return HttpResponse(status=204)
