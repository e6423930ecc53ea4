"""Who and where a log line is about, and JSON lines on stdout (`LOG_FORMAT=json`).

The request, room and sender of whatever a task is handling live in context
variables: the HTTP middleware sets the request (and the view its room), the
WebSocket consumer its room and sender at the handshake, the MQTT and XMPP
edges per message. A log call may also pass them itself (`extra={"room": ...}`),
which wins. `JsonFormatter` writes one object per line with `time`, `level`,
`logger`, `message`, the context keys that are known, and `exc` when there is one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("log_request", default=None)
ROOM: contextvars.ContextVar[str | None] = contextvars.ContextVar("log_room", default=None)
SENDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("log_sender", default=None)
FIELDS = {"request": REQUEST, "room": ROOM, "sender": SENDER}
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 64


def bind(*, room: str | None = None, sender: str | None = None) -> None:
    """Say which room and sender this task is busy with (None leaves one unchanged)."""
    if room is not None:
        ROOM.set(room)
    if sender is not None:
        SENDER.set(sender)


class ContextFilter(logging.Filter):
    """On the handler: copies the context onto each record when it is logged (formatting may be later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, var in FIELDS.items():
            if getattr(record, key, None) is None:
                setattr(record, key, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in FIELDS.items():
            value = getattr(record, key, None) or var.get()
            if value:
                line[key] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class RequestContext:
    """Middleware: a request id for every HTTP request's log lines, echoed in the response.

    A proxy's `X-Request-ID` is kept (up to 64 characters), else one is made.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _start(self, request: HttpRequest) -> tuple[str, list[contextvars.Token[str | None]]]:
        given = request.headers.get(REQUEST_ID_HEADER, "")[:MAX_REQUEST_ID]
        request_id = given if given.isprintable() and given else uuid.uuid4().hex
        tokens = [REQUEST.set(request_id), ROOM.set(None), SENDER.set(None)]
        return request_id, tokens

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        request_id, tokens = self._start(request)
        try:
            response: HttpResponse = self.get_response(request)
        finally:
            for var, token in zip(FIELDS.values(), tokens, strict=True):
                var.reset(token)
        response[REQUEST_ID_HEADER] = request_id
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        request_id, tokens = self._start(request)
        try:
            response: HttpResponse = await self.get_response(request)
        finally:
            for var, token in zip(FIELDS.values(), tokens, strict=True):
                var.reset(token)
        response[REQUEST_ID_HEADER] = request_id
        return response
