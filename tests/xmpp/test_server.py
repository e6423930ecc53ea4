"""The protocol server's queue: message stanzas queued back to back reach the application as one batch."""

from __future__ import annotations

from typing import Any

from protocols.xmpp import server as server_module
from protocols.xmpp.config import XmppConfig
from protocols.xmpp.server import XmppServer
from protocols.xmpp.testing import XmppCommunicator


async def _app(scope: Any, receive: Any, send: Any) -> None:
    return None


def _server() -> XmppServer:
    config = XmppConfig(domain="localhost", component="bridge.localhost", secret="s", host="127.0.0.1",
                        port=5347, muc_service="conference.localhost")
    return XmppServer(application=_app, config=config)


def _message(body: str) -> Any:
    return XmppCommunicator(_app).message_event(sender="lobby@conference.localhost/carol", body=body)


async def test_messages_queued_together_are_one_batch_and_nothing_is_reordered() -> None:
    server = _server()
    presence = {"type": "xmpp.presence", "sender": "lobby@conference.localhost/dave"}
    for event in (_message("1"), _message("2"), presence, _message("3"), {"type": "xmpp.disconnect", "reason": "x"}):
        server._enqueue(event)  # type: ignore[arg-type]
    first = await server._receive()
    assert first["type"] == "xmpp.messages"
    assert [m["body"] for m in first["messages"]] == ["1", "2"]  # type: ignore[typeddict-item]
    assert await server._receive() == presence  # held back by the batch, next in line
    lone = await server._receive()
    assert lone["type"] == "xmpp.message" and lone["body"] == "3"  # type: ignore[typeddict-item]
    assert (await server._receive())["type"] == "xmpp.disconnect"


async def test_a_batch_has_at_most_max_batch_messages(monkeypatch: Any) -> None:
    monkeypatch.setattr(server_module, "MAX_BATCH", 3)
    server = _server()
    for n in range(5):
        server._enqueue(_message(str(n)))
    batches = [await server._receive(), await server._receive()]
    assert [[m["body"] for m in b["messages"]] for b in batches] == [["0", "1", "2"], ["3", "4"]]  # type: ignore[typeddict-item]
