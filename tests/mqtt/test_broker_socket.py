"""The MQTT server's socket under paho: few system calls, bounded buffers, nothing lost or reordered."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from protocols.mqtt.server import _BrokerSocket


class CountingSocket:
    """A real non-blocking socket whose `recv` and `send` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0
        self.sends = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def send(self, data: bytes | bytearray) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@pytest.fixture
def pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield CountingSocket(ours), theirs
    ours.close()
    theirs.close()


def read_packet(sock: _BrokerSocket) -> bytes:
    """As paho reads: the command byte, the remaining length byte, then the rest."""
    command = sock.recv(1)
    length = sock.recv(1)
    rest = b""
    while len(rest) < length[0]:
        rest += sock.recv(length[0] - len(rest))
    return command + length + rest


def packet(i: int) -> bytes:
    body = f"rooms/lobby/messages {i}".encode()
    return bytes([0x30, len(body)]) + body


def test_a_burst_of_packets_is_read_with_one_system_call_not_three_per_packet(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    counting, theirs = pair
    sent = [packet(i) for i in range(100)]
    theirs.sendall(b"".join(sent))
    sock = _BrokerSocket(counting)  # type: ignore[arg-type]
    assert [read_packet(sock) for _ in range(100)] == sent
    assert counting.recvs == 1
    assert not sock.drained
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    assert sock.drained  # the server waits for the selector again, nothing left behind


def test_a_packet_split_across_reads_comes_whole(pair: tuple[CountingSocket, socket.socket]) -> None:
    counting, theirs = pair
    sock = _BrokerSocket(counting)  # type: ignore[arg-type]
    whole = packet(7)
    theirs.sendall(whole[:5])
    assert sock.recv(1) + sock.recv(1) + sock.recv(100) == whole[:5]
    with pytest.raises(BlockingIOError):
        sock.recv(100)
    theirs.sendall(whole[5:])
    assert sock.recv(100) == whole[5:]


def test_writes_are_coalesced_until_flushed_and_arrive_in_order(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    counting, theirs = pair
    sock = _BrokerSocket(counting)  # type: ignore[arg-type]
    acks = [bytes([0x40, 0x02, 0x00, i]) for i in range(50)]
    for ack in acks:
        assert sock.send(ack) == len(ack)
    assert counting.sends == 0
    assert sock.flush()
    assert counting.sends == 1
    theirs.setblocking(False)
    assert theirs.recv(4096) == b"".join(acks)


def test_a_peer_that_does_not_read_fills_a_bounded_buffer_and_loses_nothing(
    pair: tuple[CountingSocket, socket.socket], monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting, theirs = pair
    monkeypatch.setattr(_BrokerSocket, "WRITE_LIMIT", 64 * 1024)
    sock = _BrokerSocket(counting)  # type: ignore[arg-type]
    written = bytearray()
    chunk = bytes(range(256)) * 16
    blocked = False
    for _ in range(10_000):
        try:
            sock.send(chunk)
        except BlockingIOError:
            blocked = True  # paho keeps the packet and asks again once writable
            break
        written += chunk
        sock.flush()
    assert blocked
    assert sock.unsent <= 64 * 1024 + len(chunk)
    received = bytearray()
    theirs.setblocking(False)
    while len(received) < len(written):
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            sock.flush()
    assert bytes(received) == bytes(written)
    assert sock.flush()


def test_held_reads_say_would_block_and_keep_what_was_read(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    counting, theirs = pair
    sock = _BrokerSocket(counting)  # type: ignore[arg-type]
    theirs.sendall(packet(1) + packet(2))
    assert read_packet(sock) == packet(1)
    sock.hold = True
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    assert not sock.drained  # held, not empty: the server reads on when the queue has room
    sock.hold = False
    assert read_packet(sock) == packet(2)


def test_closing_sends_what_is_buffered_first(pair: tuple[CountingSocket, socket.socket]) -> None:
    counting, theirs = pair
    sock = _BrokerSocket(counting)  # type: ignore[arg-type]
    sock.send(b"\xe0\x00")  # DISCONNECT
    sock.close()
    assert theirs.recv(16) == b"\xe0\x00"
    assert theirs.recv(16) == b""
