"""What one write to one loopback socket costs here: the floor under a room's fan-out pass.

The room hub writes a frame to each local socket in turn (one `transport.write`
each, see protocols/websocket/hub.py), so a pass over a room of N sockets takes
at least N times one write. This measures that write alone: one uvloop server
process pinned to the first CPU accepts N plain TCP connections from a reader
process pinned to another CPU, which reads (and, with `--stamps`, asks for the
kernel's receive stamps, as the fan-out listeners do); then the server writes
one frame-sized payload to every socket, many times over, and prints the CPU
and wall time per socket write. No WebSocket, no Django: the kernel's and the
event loop's share only.
Run: python -m benchmarks.write_floor [--sockets 1000] [--size 450] [--passes 50] [--stamps]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import selectors
import socket
import statistics
import time

import uvloop

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python 3.11 lacks the name


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def _reader(port: int, sockets: int, stamps: bool, cpu: int) -> None:
    """Connects, then reads whatever arrives until the server closes every socket."""
    _pin(cpu)
    selector = selectors.DefaultSelector()
    for _ in range(sockets):
        sock = socket.create_connection(("127.0.0.1", port))
        if stamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_sockets = sockets
    while open_sockets:
        for key, _ in selector.select():
            sock = key.fileobj
            try:
                data = sock.recvmsg(65536, 256)[0]  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                open_sockets -= 1


class _Accepted(asyncio.Protocol):
    def __init__(self, transports: list[asyncio.Transport], wanted: int, all_in: asyncio.Event) -> None:
        self.transports, self.wanted, self.all_in = transports, wanted, all_in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transports.append(transport)  # type: ignore[arg-type]
        if len(self.transports) >= self.wanted:
            self.all_in.set()


async def _measure(args: argparse.Namespace) -> None:
    _pin(0)
    transports: list[asyncio.Transport] = []
    all_in = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Accepted(transports, args.sockets, all_in), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = multiprocessing.Process(target=_reader, args=(port, args.sockets, args.stamps, 1))
    reader.start()
    async with asyncio.timeout(60):
        await all_in.wait()
    payload = b"\x81\x7e" + (args.size - 4).to_bytes(2, "big") + b"x" * (args.size - 4)
    wall, cpu = [], []
    for _ in range(args.passes):
        await asyncio.sleep(args.gap)  # the reader drains; the next pass starts as a room's would
        started, cpu_started = time.perf_counter(), time.process_time()
        for transport in transports:
            transport.write(payload)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    for transport in transports:
        transport.close()
    server.close()
    reader.join(30)
    per = 1e6 / args.sockets
    print(f"{args.sockets} sockets, {args.size}-byte writes, {args.passes} passes"
          f"{', receive stamps on' if args.stamps else ''}: per socket write, median wall "
          f"{statistics.median(wall) * per:.2f} us, CPU {statistics.median(cpu) * per:.2f} us; "
          f"one pass {statistics.median(wall) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--size", type=int, default=450, help="bytes per write (at least 4)")
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between passes")
    parser.add_argument("--stamps", action="store_true", help="the reader asks for receive stamps")
    args = parser.parse_args()
    if not 4 <= args.size < 65536:
        parser.error("--size must be 4 to 65535")
    uvloop.run(_measure(args))


if __name__ == "__main__":
    main()
