"""A minimal WebSocket client for many sockets in one process: frames parsed by hand.

A full client library decodes, validates and queues every frame in Python; at
tens of thousands of frames per second that, not the server, would be what a
benchmark measures. This one only splits frames, answers pings, and hands each
text payload to a callback.

With `stamp_arrivals()`, a socket is read with `recvmsg` and the kernel's
receive stamp (SO_TIMESTAMPNS): `arrival()` inside the callback is when the
frame reached this machine, not when this process got round to it. One
process reading 1,000 sockets spends about 30 us of CPU per frame, so the
last socket of a fan-out pass is read some 30 ms after its frame arrived:
that queueing is the load generator's, not the server's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python 3.11 lacks the name
_arrived: float | None = None  # the kernel's stamp of the data being handled now (monotonic clock)


def arrival() -> float:
    """When the data the callback is handling arrived (stamped sockets), else now; monotonic clock."""
    return _arrived if _arrived is not None else time.monotonic()


class RawWebSocket(asyncio.Protocol):
    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        self.on_text = on_text
        self.buffer = bytearray()
        self.handshake: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.sock: socket.socket | None = None  # with stamp_arrivals: a duplicate read with recvmsg
        self.wall_to_monotonic = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            self.upgraded = True
            self.handshake.set_result(head)
        self._frames()

    def stamp_arrivals(self) -> None:
        """Read from now on with the kernel's receive stamps (after the handshake)."""
        assert self.transport is not None
        fd = self.transport.get_extra_info("socket").fileno()
        self.sock = socket.socket(fileno=os.dup(fd))
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.wall_to_monotonic = time.time() - time.monotonic()
        self.transport.pause_reading()  # the transport's reader out, ours in on the duplicate
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read_stamped)

    def _read_stamped(self) -> None:
        global _arrived
        assert self.sock is not None and self.transport is not None
        try:
            data, ancillary, _, _ = self.sock.recvmsg(262144, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.transport.close()
            return
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack_from("qq", raw)
                _arrived = seconds + nanoseconds * 1e-9 - self.wall_to_monotonic
        try:
            self.data_received(data)
        finally:
            _arrived = None

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    return
                (length,) = struct.unpack_from("!H", buf, 2)
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                (length,) = struct.unpack_from("!Q", buf, 2)
                offset = 10
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if opcode in (0x1, 0x0):
                self.on_text(payload)
            elif opcode == 0x9:
                self.send_frame(0xA, payload)
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()

    def send_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(head + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_frame(0x8, struct.pack("!H", 1000))
            self.transport.close()


async def connect(url: str, on_text: Callable[[bytes], None], *, headers: dict[str, str] | None = None) -> RawWebSocket:
    """Open one socket; raises if the server does not answer 101."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: RawWebSocket(on_text), parts.hostname, parts.port or 80
    )
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Upgrade: websocket",
        "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    assert proto.transport is not None
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(proto.handshake, timeout=60)
    if not head.startswith(b"HTTP/1.1 101"):
        proto.close()
        raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
    return proto
