"""The WebSocket protocol class (protocols/websocket/server.py): its queue and flag, and a real
uvicorn on loopback in this process serving a small echo application through it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.frames import OP_TEXT, Frame
from websockets.streams import StreamReader

from protocols.websocket.server import (
    FRAME_WRITER,
    WS_PROTOCOL,
    Flag,
    Inbox,
    WebSocketProtocol,
    text_frame,
)

pytestmark = pytest.mark.asyncio


async def test_inbox_gets_in_order_and_waits_for_a_put() -> None:
    inbox = Inbox()
    assert inbox.empty() and inbox.qsize() == 0
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert inbox.qsize() == 2
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(waiting, 1) == 3
    assert inbox.empty()


async def test_inbox_get_cancelled_leaves_the_item_for_the_next() -> None:
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    inbox.put_nowait("x")
    assert await asyncio.wait_for(inbox.get(), 1) == "x"


async def test_flag_wait_returns_while_set_and_wakes_waiters_on_set() -> None:
    flag = Flag()
    flag.set()
    assert flag.is_set()
    assert await flag.wait() is True
    flag.clear()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"{event['text']} ({dict(scope['headers'])[b'x-tag'].decode()})"})


async def test_uvicorn_with_the_protocol_echoes_and_keeps_no_handshake_headers() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_echo, ws=WS_PROTOCOL, lifespan="off", log_level="warning", ws_ping_interval=None)
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with websockets.connect(f"ws://127.0.0.1:{port}/", additional_headers={"X-Tag": "t1"}) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 5) == "hello (t1)"
            [proto] = list(server.server_state.connections)
            assert isinstance(proto, WebSocketProtocol)
            assert isinstance(proto.queue, Inbox) and isinstance(proto.writable, Flag)
            assert proto.response is None
            assert not proto.request.headers  # emptied once the handshake was answered
            await ws.send("again")
            assert await asyncio.wait_for(ws.recv(), 5) == "again (t1)"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


@pytest.mark.parametrize("text", ["", "short", "é" * 100, "x" * 70_000])
async def test_text_frame_is_one_unmasked_text_frame_as_websockets_reads_it(text: str) -> None:
    reader = StreamReader()
    reader.feed_data(text_frame(text))
    reader.feed_eof()
    parsing = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parsing)
    parsed = done.value.value
    assert (parsed.opcode, parsed.fin, parsed.data.decode()) == (OP_TEXT, True, text)
    assert reader.at_eof()  # nothing after the frame


async def _frames(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers each text with what the frame writer said: written bytes or declined."""
    assert (await receive())["type"] == "websocket.connect"
    write = scope["extensions"][FRAME_WRITER]
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        if event["text"] == "close":
            await send({"type": "websocket.close", "code": 1000})
            scope["state"]["after_close"] = write(text_frame("late"))
            continue
        if not write(text_frame(f"frame {event['text']}")):
            await send({"type": "websocket.send", "text": f"declined {event['text']}"})


async def _serve(app: Any, **config: Any) -> tuple[uvicorn.Server, asyncio.Future[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, ws=WS_PROTOCOL, lifespan="off", log_level="warning",
                                           ws_ping_interval=None, **config))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, serving, sock.getsockname()[1]


async def test_the_frame_writer_writes_at_once_and_declines_while_paused_compressed_or_closed() -> None:
    server, serving, port = await _serve(_frames)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            await ws.send("1")
            assert await asyncio.wait_for(ws.recv(), 5) == "frame 1"
            [proto] = list(server.server_state.connections)
            proto.pause_writing()  # what the transport calls above its high-water mark
            assert proto.write_frame(text_frame("while paused")) is False
            proto.resume_writing()
            assert proto.write_frame(text_frame("resumed")) is True
            assert await asyncio.wait_for(ws.recv(), 5) == "resumed"
            await ws.send("close")
            await ws.wait_closed()
            assert proto.scope["state"]["after_close"] is False
        # permessage-deflate rewrites every frame: never the prebuilt bytes.
        async with websockets.connect(f"ws://127.0.0.1:{port}/", compression="deflate") as ws:
            await ws.send("3")
            assert await asyncio.wait_for(ws.recv(), 5) == "declined 3"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
