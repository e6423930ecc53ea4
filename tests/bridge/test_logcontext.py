"""LOG_FORMAT=json: one JSON object per line, with the request, room and sender where known."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.test import Client

from bridge.logcontext import ContextFilter, JsonFormatter, bind

pytestmark = pytest.mark.django_db


def test_a_line_is_json_with_what_is_known() -> None:
    record = logging.LogRecord("bridge.x", logging.WARNING, __file__, 1, "refused %s", ("a",), None)
    assert json.loads(JsonFormatter().format(record)) == {
        "time": json.loads(JsonFormatter().format(record))["time"],
        "level": "WARNING", "logger": "bridge.x", "message": "refused a",
    }
    record.sender = "device:thermo-1"
    bind(room="lobby")
    line = json.loads(JsonFormatter().format(record))
    assert line["room"] == "lobby" and line["sender"] == "device:thermo-1"


def test_every_request_has_an_id_in_its_log_lines_and_response(client: Client) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger("bridge.views.metrics").addHandler(handler)
    try:
        response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", headers={"X-Request-ID": "req-42"})
    finally:
        logging.getLogger("bridge.views.metrics").removeHandler(handler)
    assert response.status_code == 403
    assert response["X-Request-ID"] == "req-42"
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["request"] == "req-42" and "refused" in line["message"]
    assert len(client.get("/healthz")["X-Request-ID"]) == 32  # made when none is given
