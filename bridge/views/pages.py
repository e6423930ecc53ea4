"""The pages a person sees: the room list and a room's live chat."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from bridge.exceptions import RoomNotFound
from bridge.selectors import room_get, room_list, room_visible


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "bridge/index.html", {"rooms": room_list(user=request.user)})


@ensure_csrf_cookie
def room(request: HttpRequest, room: str) -> HttpResponse:
    try:
        room_obj = room_get(slug=room)
    except RoomNotFound as exc:
        raise Http404(exc.detail) from exc
    if not room_visible(room_obj, request.user):
        raise Http404("No such room.")
    return render(request, "bridge/room.html", {"room": room_obj})
