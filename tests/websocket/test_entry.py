"""The `websocket` entry's routing (protocols/websocket/entry.py), as Channels' URLRouter routed."""

from __future__ import annotations

import pytest

from protocols.websocket.consumers import RoomConsumer, UnknownPathConsumer
from protocols.websocket.entry import WebSocketEntry
from protocols.websocket.routing import websocket_urlpatterns
from protocols.websocket.security import OriginPolicy


def _entry() -> WebSocketEntry:
    return WebSocketEntry(websocket_urlpatterns, OriginPolicy(frozenset(), ("testserver",)))


@pytest.mark.parametrize(("scope", "consumer", "kwargs"), [
    ({"path": "/ws/rooms/lobby/"}, RoomConsumer, {"room": "lobby"}),
    ({"path": "/chat/ws/rooms/lobby/", "root_path": "/chat"}, RoomConsumer, {"room": "lobby"}),
    ({"path": "/ws/rooms/a/b/"}, UnknownPathConsumer, {}),
])
def test_routes_by_path_less_root_path(scope: dict[str, str], consumer: type, kwargs: dict[str, str]) -> None:
    routed = dict(scope)
    app = _entry()._route(routed)
    assert app.consumer_class is consumer
    assert routed["url_route"] == {"args": (), "kwargs": kwargs}


def test_no_route_is_a_clear_error() -> None:
    entry = WebSocketEntry(websocket_urlpatterns[:1], OriginPolicy(frozenset(), ()))
    with pytest.raises(ValueError, match="No route found"):
        entry._route({"path": "/elsewhere/"})
