"""uvicorn's WebSocket protocol with a smaller idle connection (`--ws protocols.websocket.server:WebSocketProtocol`).

A tracemalloc diff over 1,000 idle sockets (`python -m benchmarks.idle_heap`)
showed about a quarter of uvicorn's share of each connection in things an idle
socket never uses again:

- the receive queue, an `asyncio.Queue`: four deques (its items, getters,
  putters and its `join` event), about 3 KiB, for a queue that one consumer
  reads and that holds one or two events (uvicorn stops reading while one waits);
- the `writable` event, an `asyncio.Event` with a deque of its own;
- the handshake's request and response headers, kept for the socket's life
  (the request also by the `websockets` parser's generator frame).

This class keeps uvicorn's behaviour (the same events, backpressure through
`writable`, keepalive pings, close handling) and replaces or empties only
these. It depends on the sans-I/O implementation's attribute names, so
`pyproject.toml` bounds uvicorn's version and tests/websocket/test_server.py
checks them.

It adds one thing: the room hub writes each frame of a busy room to every
local socket, and uvicorn's send encodes the text, builds and serializes a
frame object and joins its output again for each socket (a profile of a
1,000-socket room: most of the fan-out pass). `text_frame` serializes a frame
once; the scope's `FRAME_WRITER` extension (`write_frame`) writes those bytes
to one socket when a send would have written at once, and declines otherwise
(then the caller sends the ordinary way, which waits or raises as before).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

# What runweb, runbridge and the documented `uvicorn --ws ...` use.
WS_PROTOCOL = "protocols.websocket.server:WebSocketProtocol"
# The scope's extension naming the socket's `write_frame` (absent on other servers).
FRAME_WRITER = "bridge.websocket.frame_writer"


def text_frame(text: str) -> bytes:
    """`text` as one unmasked, unfragmented text frame, as a server writes it (RFC 6455 5.2)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


class Inbox:
    """The part of `asyncio.Queue` uvicorn uses (`put_nowait`, `get`, `empty`, `qsize`): no
    bound (uvicorn bounds it by pausing reads), the storage made on first use."""

    __slots__ = ("_items", "_getters")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._getters:
            for getter in self._getters:
                if not getter.done():
                    getter.set_result(None)
                    break

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    async def get(self) -> Any:
        """The oldest item; waits (without suspending when there is one) as `Queue.get` does."""
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            finally:
                self._getters.remove(getter)
        item = self._items.popleft()
        if not self._items:
            self._items = None  # an idle socket keeps no empty deque (600 bytes)
        return item


class Flag:
    """The part of `asyncio.Event` uvicorn uses for `writable`: `wait` returns at once,
    without suspending, while set; waiters are kept only while there are some."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """See the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and not self.close_sent:  # a handshake the server accepts
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[FRAME_WRITER] = self.write_frame

    def write_frame(self, frame: bytes) -> bool:
        """Write a `text_frame` (or several joined) now if a `websocket.send` would have
        written it without waiting: the handshake answered, the connection open with no
        extension that rewrites frames (compression) and no fragmented message under way,
        no close sent, and the transport not paused (below its high-water mark). False,
        writing nothing, otherwise."""
        conn = self.conn
        if (
            self.writable.is_set()
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and conn.state is State.OPEN
            and not conn.extensions
            and not conn.expect_continuation_frame
            and not self.transport.is_closing()
        ):
            self.transport.write(frame)
            return True
        return False

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # The handshake is answered: its headers are read by nobody from here on (the
            # application has its own copy in the scope).
            self.request.headers.clear()
            self.response = None  # type: ignore[assignment]
