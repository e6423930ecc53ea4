"""One socket's write path: its frames in order, written at once while the socket takes them.

The room hub writes each frame of a busy room to every local socket, so one
socket's write must cost no more than the write itself, and one socket whose
client does not read must never hold up the others:

- `Outlet.offer(text)` is synchronous. With nothing queued, it runs the
  server's send right there; that send completes without suspending while the
  socket's write buffer has room (uvicorn waits only while its transport is
  paused). If it does suspend, the rest of that send and whatever is offered
  meanwhile (at most `limit` frames, then `offer` refuses and the caller fills
  the gap from the database) go through one task of this socket's own. A send
  that waits longer than `timeout` seconds ends the socket (`on_gone`), as a
  client that does not read always was.
  With the server's frame writer (`protocols.websocket.server.FRAME_WRITER`)
  and a frame serialized once by the caller, `offer(text, frame)` writes those
  bytes instead when nothing is queued and the writer takes them, so a room's
  pass over its sockets is one transport write each; when the writer declines
  (the transport is paused, the socket closing, compression on) it is the
  ordinary send above, with its waiting, backlog and timeout.
  `offer_bytes(frames)` is the same for several frames joined (a batch): all
  written at once, or nothing (then the caller offers them one by one).
- `Outlet.write(text)` is the consumer's own frames (history, acks, errors):
  queued behind the others and awaited until written, so history is read from
  the database a page at a time as the client takes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
FrameWriter = Callable[[bytes], bool]


class ClientGone(Exception):
    """The socket takes nothing more: the peer went away, or its send buffer stayed full."""


class _Rest:
    """Awaits the rest of a coroutine that was stepped once by hand and yielded `pending`.

    What a task would do with it (Python 3.12's eager tasks do this for any task;
    3.11 has none): hand what it waits on to the awaiting task, resume it when that
    is done, pass in a cancellation.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, None, None]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                yield pending
            except BaseException as exc:  # noqa: BLE001 - passed on, not swallowed: the send sees a cancellation
                try:
                    pending = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                pending = coro.send(None)
            except StopIteration:
                return


# The backlog of a socket whose sends are not blocked: never appended to (appends would
# vanish); `_start` gives a blocked socket a deque of its own.
_EMPTY: deque[Any] = deque(maxlen=0)


class Outlet:
    """See the module's docstring. `on_gone(reason)` is called once, when the socket is given up."""

    __slots__ = ("_send", "_write_frame", "timeout", "limit", "on_gone", "_backlog", "_task", "gone")

    def __init__(self, send: Send, *, timeout: float, limit: int, on_gone: Callable[[str], None],
                 write_frame: FrameWriter | None = None) -> None:
        self._send = send
        self._write_frame = write_frame
        self.timeout = timeout
        self.limit = limit
        self.on_gone = on_gone
        # Waiting behind a blocked send: (text, the consumer's future or None). Shared and
        # empty until a send blocks (an empty deque per idle socket is 600 bytes).
        self._backlog: deque[tuple[str, asyncio.Future[None] | None]] = _EMPTY
        self._task: asyncio.Task[None] | None = None
        self.gone: str | None = None

    @property
    def blocked(self) -> bool:
        """A send is waiting for the client to read."""
        return self._task is not None

    def offer(self, text: str, frame: bytes | None = None) -> bool:
        """Write now, or queue behind a blocked send; False when refused (queue full, socket gone).
        `frame`: `text` already serialized (`server.text_frame`), written as it is when it can be."""
        if self.gone is not None:
            return False
        if self._task is not None:
            if len(self._backlog) >= self.limit:
                return False
            self._backlog.append((text, None))
            return True
        if frame is not None and self._write_frame is not None and self._write_frame(frame):
            return True
        self._start(text)
        return self.gone is None

    def offer_bytes(self, frames: bytes) -> bool:
        """Serialized frames written now, or nothing written and False: nothing is queued, the
        server has a frame writer and it takes them (the caller then offers them one by one)."""
        return (self.gone is None and self._task is None and self._write_frame is not None
                and self._write_frame(frames))

    async def write(self, text: str) -> None:
        """Write after everything queued; returns once written. Raises ClientGone."""
        if self.gone is not None:
            raise ClientGone(self.gone)
        if self._task is None:
            self._start(text)
            if self._task is None:
                if self.gone is not None:
                    raise ClientGone(self.gone)
                return
            waiter = asyncio.get_running_loop().create_future()
            self._backlog.append(("", waiter))  # marks where this frame ends
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._backlog.append((text, waiter))
        await waiter

    def _start(self, text: str) -> None:
        coro = self._send({"type": "websocket.send", "text": text})
        try:
            pending = coro.send(None)
        except StopIteration:
            return  # written: the usual case
        except OSError as exc:  # uvicorn's ClientDisconnected: the peer is gone
            self._give_up(f"it went away ({exc.__class__.__name__})")
            return
        self._backlog = deque()
        self._task = asyncio.ensure_future(self._drain(_Rest(coro, pending)))

    async def _drain(self, first: _Rest) -> None:
        """The blocked send, then the backlog, each within `timeout` (one task per blocked socket)."""
        try:
            async with asyncio.timeout(self.timeout):
                await first
            while self._backlog:
                text, waiter = self._backlog.popleft()
                if text:
                    async with asyncio.timeout(self.timeout):
                        await self._send({"type": "websocket.send", "text": text})
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        except TimeoutError:
            self._give_up(f"its send buffer stayed full for {self.timeout} s")
        except OSError as exc:
            self._give_up(f"it went away ({exc.__class__.__name__})")
        finally:
            self._task = None
            self._backlog = _EMPTY

    def _give_up(self, reason: str) -> None:
        if self.gone is not None:
            return
        self.gone = reason
        for _, waiter in self._backlog:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ClientGone(reason))
        self._backlog.clear()
        self.on_gone(reason)

    def close(self) -> None:
        """No more frames (the socket closed): a blocked send is abandoned."""
        if self.gone is None:
            self.gone = "closed"
            for _, waiter in self._backlog:
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ClientGone("closed"))
            self._backlog.clear()
        if self._task is not None:
            self._task.cancel()
