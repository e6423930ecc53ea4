"""Django's own error responses under `/api/` are the contract's JSON errors, never HTML."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from django.http import HttpRequest, HttpResponse, JsonResponse

from bridge.health import HEALTH
from bridge.probes import DATABASE, DATABASE_AWAY, DATABASE_AWAY_DETAIL

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    500: "internal_error",
    503: "unavailable",
}
# Seconds a client is told to wait before trying again while the database is away.
RETRY_AFTER = "5"


class ApiJsonErrors:
    """Outermost middleware: an error page Django made for an API path becomes JSON.

    The API's views answer their own errors in JSON; what reaches here as HTML is
    Django's (an unknown URL, a RequestDataTooBig, a crash: its 400/404/500 pages,
    the technical ones with DEBUG=1). Whatever the cause, the client gets the
    status with `{"error": {"code", "detail"}}`; Django has logged the cause.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith(API_PREFIX)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            code = CODES.get(status, "internal_error" if status >= 500 else "bad_request")
            logger.info("%s %s: Django's %s answered as JSON", request.method, request.path, status)
            return JsonResponse({"error": {"code": code, "detail": _detail(request, status)}}, status=status)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """The database away (an outage, a restart) is no bug of the request: 503 with
        Retry-After, not a 500 with a traceback. The request's transaction rolled back; if
        the connection died during its commit, a retry with the same `client_id` stores
        nothing twice."""
        if not isinstance(exception, DATABASE_AWAY):
            return None
        # HEALTH logs the outage once; each refused request is an INFO line, not Django's ERROR.
        HEALTH.failing(DATABASE, exception)
        logger.info("%s %s: 503, the database is unavailable: %s", request.method, request.path, exception)
        headers = {"Retry-After": RETRY_AFTER}
        response: HttpResponse
        if request.path.startswith(API_PREFIX):
            response = JsonResponse({"error": {"code": "unavailable", "detail": DATABASE_AWAY_DETAIL}},
                                    status=503, headers=headers)
        else:
            response = HttpResponse("The service is unavailable; try again shortly.\n", status=503,
                                    content_type="text/plain; charset=utf-8", headers=headers)
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response


def _detail(request: HttpRequest, status: int) -> str:
    if status == 404:
        return f"No API endpoint {request.path!r}."
    if status >= 500:
        return "The server failed on this request; the failure is logged."
    try:
        return f"{HTTPStatus(status).phrase}."
    except ValueError:
        return "The request was refused."
