"""A small TCP proxy for fault tests: put it between a process and a server, then misbehave.

    proxy = TcpProxy(target_port=redis_port)
    proxy.start()                       # listens on proxy.port, in a thread of its own
    proxy.delay(0.5)                    # every chunk, both ways, half a second late
    proxy.blackhole()                   # connections stay open, nothing gets through (a frozen peer)
    proxy.cut()                         # every open connection is closed now (a network drop)
    proxy.refuse()                      # cut, and close new connections at once (a server down)
    proxy.refuse(cut=False)             # close new connections at once; open ones run until
                                        # their server ends them, delivering what it sent
    proxy.heal()                        # pass everything again
    proxy.stop()

What a black hole swallows is dropped, as a partition would; new connections
during it are accepted and then starve, as they would behind a dead route.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.support.processes import free_port


class TcpProxy:
    def __init__(self, *, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0
        self._delay = 0.0
        self._blackhole = False
        self._refuse = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing: set[asyncio.StreamWriter] = set()  # flushing what they hold, then closed

    # --- from the test's thread ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def blackhole(self) -> None:
        self._blackhole = True

    def heal(self) -> None:
        self._delay, self._blackhole, self._refuse = 0.0, False, False

    def refuse(self, *, cut: bool = True) -> None:
        self._refuse = True
        if cut:
            self.cut()

    @property
    def open_connections(self) -> int:
        """Connections the proxy still passes (ended by their server or a cut: not counted)."""
        return len(self._writers) // 2

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)

    # --- the proxy's loop -------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        for writer in self._closing:  # a peer that never read what was left for it
            writer.transport.abort()
        self._closing.clear()

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refuse:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        pumps = [
            asyncio.create_task(self._pump(client_reader, server_writer)),
            asyncio.create_task(self._pump(server_reader, client_writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        ended_by_a_peer = client_writer in self._writers  # a cut aborted them already
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            if ended_by_a_peer:
                # As the kernel would: what one side wrote before it went still reaches the
                # other (a process killed with -9 still has its sent bytes delivered).
                writer.close()
                self._closing.add(writer)
            else:
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if self._blackhole:
                    continue
                if self._delay:
                    await asyncio.sleep(self._delay)
                writer.write(chunk)
                await writer.drain()
