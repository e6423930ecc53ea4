"""SIGTERM to the web process: WebSockets hear 1001 (going away), and it exits in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.support.processes import Proc, free_port, start_manage, wait_for_port
from tests.support.stack import provision

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _runweb(tmp_path: Path, **env: str) -> Iterator[tuple[Proc, str]]:
    """runweb on a fresh stack; its process and base URL."""
    stack = provision(tmp_path, **env)
    port = free_port()
    proc = start_manage("runweb", ["runweb", f"127.0.0.1:{port}"], env=stack.env, log_dir=tmp_path)
    stack.procs.append(proc)
    try:
        wait_for_port(port, proc=proc)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        stack.stop()


async def test_sigterm_closes_websockets_with_1001_and_exits(tmp_path: Path) -> None:
    with _runweb(tmp_path, BRIDGE_SHUTDOWN_GRACE="5") as (proc, base):
        url = base.replace("http", "ws", 1) + "/ws/rooms/lobby/"
        async with websockets.connect(url, additional_headers={"Origin": base}) as sock:
            assert json.loads(await asyncio.wait_for(sock.recv(), timeout=10))["type"] == "history"
            # The client offered permessage-deflate; runweb declines it unless WEBSOCKET_COMPRESSION=1.
            assert sock.response.headers.get("Sec-WebSocket-Extensions") is None
            proc.popen.send_signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(sock.recv(), timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value
        # uvicorn ends a graceful stop by re-raising the signal it caught (exit status -15).
        assert await asyncio.to_thread(proc.popen.wait, 15) in (0, -signal.SIGTERM)
        print(f"web process stopped {time.monotonic() - started:.2f} s after SIGTERM")


async def test_websocket_compression_is_negotiated_when_enabled(tmp_path: Path) -> None:
    with _runweb(tmp_path, WEBSOCKET_COMPRESSION="1") as (_, base):
        url = base.replace("http", "ws", 1) + "/ws/rooms/lobby/"
        async with websockets.connect(url, additional_headers={"Origin": base}) as sock:
            assert "permessage-deflate" in sock.response.headers.get("Sec-WebSocket-Extensions", "")
            assert json.loads(await asyncio.wait_for(sock.recv(), timeout=10))["type"] == "history"
