"""The MQTT protocol server: one broker connection, mapped onto one ASGI application instance.

Everything runs on the asyncio loop, paho-mqtt included: paho parses and builds
the packets (`loop_read`, `loop_write`, `loop_misc`), while this server owns the
socket (`_BrokerSocket`: connected without blocking the loop, read in large
chunks, written once per loop turn with TCP_NODELAY), the reconnects with
back-off and the flow control. No thread and no hand-off between threads: a
packet is read, parsed and queued for the application in one wake-up of the
loop. Every reply from the application goes through `_send`, the one place
that talks back to paho.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.health import HEALTH
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.events import (
    RECEIVE_NOWAIT,
    IncomingEvent,
    MessageEvent,
    MqttScope,
    PublishedEvent,
)
from protocols.mqtt.topics import shorten

logger = logging.getLogger(__name__)

Outcome = Literal["accepted", "refused", "lost"]
Application = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]

# CONNACK codes meaning "this broker does not speak MQTT 5" (v5: 0x84; 3.1.1: 1).
UNSUPPORTED_PROTOCOL = {132, 1}
HEALTH_CHECK = "mqtt_broker"  # in /readyz and bridge_dependency_up
STOPPING_CHECK = "stopping"  # not ready while draining: nothing new should be routed here
# Events the server itself puts on the application's queue: they take no place of the
# flow control (see `_queue`).
LOOP_EVENTS = frozenset({"mqtt.published", "mqtt.drain"})
RECEIVE_MAXIMUM = 1000
# Events waiting for the application, at most. When the queue is full the server stops
# reading the socket, so the broker holds what it would send (QoS 1/2 queue up for the
# session; QoS 0 is the broker's to drop): the flow control uvicorn does for HTTP, for
# MQTT. Reading resumes once the application has taken half of them.
MAX_QUEUED = 1000
# Seconds for a TCP connect and TLS handshake; between keep-alive checks (paho's loop_misc).
CONNECT_TIMEOUT = 10.0
TICK = 1.0
# loop_read calls per wake-up before other work on the loop gets a turn.
READ_TURN = 64
# Publishes sent and not yet answered, at most (less if the broker's Receive Maximum is).
PUBLISH_WINDOW = 500
# What a two-byte PUBACK means (MQTT 5: reason Success, no properties), built once and
# shared by every such acknowledgement (nothing downstream changes them).
PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
# The PUBACK reasons that accept a publish: Success (0) and No matching subscribers (16).
_PUBACK_ACCEPTED = {0: PUBACK_SUCCESS, 16: ReasonCode(PacketTypes.PUBACK, identifier=16)}
_REASON_NAMES = {id(reason): str(reason) for reason in _PUBACK_ACCEPTED.values()}


class MqttServerError(Exception):
    """The server cannot go on (the application failed or gave an impossible reply)."""


class _BrokerSocket:
    """The broker connection as paho sees it: `recv` and `send` on a non-blocking socket.

    paho reads a packet's fixed header one byte per `recv`, which on a plain socket is
    three or four system calls per packet; here one `recv` of up to READ_SIZE bytes
    serves them all. `send` only appends to a buffer that `flush` writes once per loop
    turn: the PUBACKs of a stored batch leave in one write instead of one each. The
    buffer is bounded: over WRITE_LIMIT, `send` says "would block" and paho keeps its
    packets until the socket drains. `hold` makes `recv` say "would block" too: the
    flow control stops paho at a packet boundary, whatever it was asked to read.
    """

    READ_SIZE = 65536
    WRITE_LIMIT = 1 << 20

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rbuf = b""
        self._rpos = 0
        self._wbuf = bytearray()
        self.drained = False  # the last recv found nothing more to read
        self.hold = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def recv(self, size: int) -> bytes:
        if self.hold:
            raise BlockingIOError("the application's queue is full")
        if self._rpos < len(self._rbuf):
            chunk = self._rbuf[self._rpos:self._rpos + size]
            self._rpos += len(chunk)
            return chunk
        try:
            data = self.sock.recv(self.READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self.drained = True
            raise
        if len(data) <= size:
            self._rbuf, self._rpos = b"", 0
            return data
        self._rbuf, self._rpos = data, size
        return data[:size]

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if len(self._wbuf) >= self.WRITE_LIMIT:
            raise BlockingIOError("the write buffer is full")
        self._wbuf += data
        return len(data)

    @property
    def unsent(self) -> int:
        return len(self._wbuf)

    def flush(self) -> bool:
        """Write what the buffer holds; True once all of it is with the kernel."""
        while self._wbuf:
            try:
                sent = self.sock.send(self._wbuf)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            del self._wbuf[:sent]
        return True

    def abort(self) -> None:
        """The connection is broken: make the next read see it (paho then reports it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.flush()  # a DISCONNECT written just before, at best
        except OSError:
            pass
        self.sock.close()


class _Client(paho.Client):
    """paho's client, given a socket this server connected instead of connecting itself
    (paho's own connect blocks for the TCP connect and the TLS handshake)."""

    prepared: _BrokerSocket | None = None

    def _create_socket(self) -> Any:
        sock, self.prepared = self.prepared, None
        if sock is None:
            raise ConnectionError("no connected socket to hand to paho")
        return sock

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        """A PUBACK that accepted the publish and has no properties (what a broker sends for
        nearly every publish: two bytes, or three with "No matching subscribers") without the
        `ReasonCode` and two `Properties` paho builds for each; in a steady stream this runs
        once per room message published. Refusals, properties and PUBCOMP are paho's."""
        packet = self._in_packet["packet"]
        size = len(packet)
        if cmd != "PUBACK" or size > 4 or (size == 4 and packet[3] != 0):
            return super()._handle_pubackcomp(cmd)
        reason = PUBACK_SUCCESS if size == 2 else _PUBACK_ACCEPTED.get(packet[2])
        if reason is None:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, PUBACK_NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("the server's client has one on_message (see _handle_publish)")

    def fit_window(self, size: int) -> None:
        """Keep at most `size` publishes unanswered on the connection just accepted (called
        from on_connect: before paho sends again what the last connection left unanswered).

        paho fixes its window before connecting and, on a reconnect, marks as many
        messages to go again as the old window held: against a broker with a smaller
        Receive Maximum they would all go at once. Those beyond `size` are held back
        instead, and go as answers come, as paho does for a full window."""
        with self._out_message_mutex:
            self._max_inflight_messages = size
            resent = 0
            for message in self._out_messages.values():
                if message.qos > 0 and message.state == paho.mqtt_ms_publish:
                    resent += 1
                    if resent > size:
                        message.state = paho.mqtt_ms_queued

    def _update_inflight(self) -> MQTTErrorCode:
        """After each answered publish paho looks through every unanswered one for one it
        holds back (queued: the window was full); with a window of 500 and none held
        back that is 500 steps per PUBACK (5 % of `runmqtt` in a steady stream). Every
        message paho keeps is either in the window (counted in `_inflight_messages`) or
        held back, so when the count covers them all there is nothing to send."""
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def _handle_publish(self) -> MQTTErrorCode:
        """An MQTT 5 PUBLISH at QoS 0 or 1 without properties (what devices send) without
        the `Properties` paho builds and parses for each (two dicts and a few dozen list
        lookups: paho decoded one in 13.4 us, this reads one in 1.6 us, timed alone; a few
        % of `runmqtt` in a steady stream); its `properties` is None. Anything else, and
        anything short, is paho's."""
        packet = self._in_packet["packet"]
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if self._protocol != paho.MQTTv5 or qos > 1 or len(packet) < 3:
            return super()._handle_publish()
        start = 2 + ((packet[0] << 8) | packet[1])  # past the topic
        if qos:
            start += 2  # the packet id
        if len(packet) <= start or packet[start] != 0:  # truncated, or it has properties
            return super()._handle_publish()
        message = paho.MQTTMessage(
            mid=(packet[start - 2] << 8) | packet[start - 1] if qos else 0, topic=bytes(packet[2:start - 2 * qos])
        )
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[start + 1:])
        message.timestamp = paho.time_func()
        # paho's _handle_on_message first looks for per-topic callbacks in a topic tree
        # (message_callback_add), which this server never registers: straight to on_message.
        on_message = self._on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)
        if qos and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


async def _wait_fd(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


async def open_broker_socket(host: str, port: int, tls: bool) -> _BrokerSocket:
    """A non-blocking TCP connection (TLS handshake done, with the system's trust store and
    the host name checked), without blocking the loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _name, address in infos:
        raw = socket.socket(family, kind, proto)
        try:
            raw.setblocking(False)
            await loop.sock_connect(raw, address)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not tls:
                return _BrokerSocket(raw)
            context = ssl.create_default_context()
            wrapped = context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
            try:
                while True:
                    try:
                        wrapped.do_handshake()
                        return _BrokerSocket(wrapped)
                    except ssl.SSLWantReadError:
                        await _wait_fd(wrapped.fileno(), write=False)
                    except ssl.SSLWantWriteError:
                        await _wait_fd(wrapped.fileno(), write=True)
            except BaseException:
                wrapped.close()
                raise
        except ssl.SSLError:
            raw.close()
            raise  # a certificate or protocol error: another address would not help
        except OSError as exc:
            raw.close()
            error = exc
        except BaseException:
            raw.close()
            raise
    raise error


class MqttServer:
    """Connect, run the application instance, reconnect on its own; `run` until cancelled."""

    def __init__(self, application: Application, config: MqttConfig) -> None:
        self.application = application
        self.config = config
        self.connected = asyncio.Event()
        self._protocol = paho.MQTTv311 if config.protocol == "3.1.1" else paho.MQTTv5
        self._generation = 0
        self.received = 0
        self._ack_ids = itertools.count(1)
        # ack_id -> (connection generation, mid, qos): an ack for a message of an
        # earlier connection is dropped; the broker redelivers it on the new one.
        self._unacked: dict[int, tuple[int, int, int]] = {}
        # Bounded: at most MAX_QUEUED events from the broker (`_waiting` of them now), then
        # reading stops (`_paused`) until the application has taken half. `mqtt.published`
        # and `mqtt.drain` take no place: there are at most as many of the first as the
        # publishes with a `publish_id` the application has in flight, its own bound.
        self._queue: asyncio.Queue[IncomingEvent] = asyncio.Queue()
        self._waiting = 0
        self._paused = False
        self._drained = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _Client | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._fallback: asyncio.Task[None] | None = None
        # The connection now open, with the client it belongs to (which, while a replaced
        # client says goodbye, is not always `_client`).
        self._sock: _BrokerSocket | None = None
        self._sock_client: _Client | None = None
        self._lost: asyncio.Event | None = None
        self._writing = False  # a writer is registered: the kernel's buffer was full
        self._flush_due = False
        self._in_write = False
        self._accepted = False  # the broker accepted the connection now open (CONNACK)
        self._failures = 0  # connection attempts failed in a row
        # The broker's Maximum Packet Size (MQTT 5 CONNACK): a larger PUBLISH would make the
        # broker drop the connection, and paho would send it again after every reconnect.
        self._max_packet: int | None = None
        # mid -> (topic, publish_id) of QoS > 0 publishes the broker has not answered yet.
        self._inflight: dict[int, tuple[str, int | None]] = {}
        self.published = 0
        self.refused = 0

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        scope: MqttScope = {
            "type": "mqtt",
            "asgi": {"version": "3.0"},
            "client_id": self.config.client_id,
            "broker": self.config.broker,
            "protocol": 5 if self._protocol == paho.MQTTv5 else 4,
            "extensions": {RECEIVE_NOWAIT: self._receive_nowait},
        }
        app: asyncio.Task[None] = asyncio.create_task(self.application(scope, self._receive, self._send))
        HEALTH.starting(HEALTH_CHECK, "connecting")  # not ready until the broker's CONNACK; not a failure
        self._start_client()
        try:
            await app
        finally:
            app.cancel()
            if self._fallback is not None:
                self._fallback.cancel()
            await self._stop_client()
            HEALTH.forget(HEALTH_CHECK)
            HEALTH.forget(STOPPING_CHECK)
            logger.info("stopped: %s messages received", self.received)
        raise MqttServerError("the MQTT application instance ended")

    async def drain(self, grace: float) -> bool:
        """Before stopping: have the application finish the work in hand (`mqtt.drain`) and
        wait for its `mqtt.drained`, at most `grace` seconds. Then cancel `run`.

        The broker connection stays up meanwhile: the answers to publishes in flight still
        arrive, and the acknowledgements of the last stored batch still leave.
        """
        HEALTH.failing(STOPPING_CHECK, "stopping: finishing the work in hand")
        logger.info("stopping: draining (at most %s s)", grace)
        self._queue.put_nowait({"type": "mqtt.drain"})
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            logger.warning("stopping: not drained after %s s; what is unfinished is done again "
                           "after the restart (unacknowledged, or published again)", grace)
            return False
        logger.info("stopping: drained")
        return True

    def _start_client(self) -> None:
        config = self.config
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=self._protocol,
            # Acknowledged by the application after its commit, not on receipt.
            manual_ack=True,
            # Persistent session on 3.1.1 (5 uses clean_start below).
            clean_session=None if self._protocol == paho.MQTTv5 else False,
        )
        paho_logger = logging.getLogger("paho")
        if paho_logger.isEnabledFor(logging.DEBUG):
            # Only for debugging: at other levels paho logs a spurious ERROR on every clean
            # shutdown, and everything an operator needs is logged by this server.
            client.enable_logger(paho_logger)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        client.max_inflight_messages_set(PUBLISH_WINDOW)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_want_write
        properties = None
        kwargs: dict[str, Any] = {}
        if self._protocol == paho.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = config.session_expiry
            # Unacknowledged messages the broker may send ahead: room for full write batches.
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs["clean_start"] = False
        # Only records where and how to connect: the connecting is `_keep_connected`'s.
        client.connect_async(
            config.host, config.port, keepalive=config.keepalive, properties=properties, **kwargs
        )
        HEALTH.starting(HEALTH_CHECK, "connecting")  # ready once subscribed (see _on_subscribe)
        self._client = client  # callbacks from any other (replaced) client are ignored
        self._keeper = asyncio.create_task(self._keep_connected(client))
        logger.info("connecting to %s as %s", config.broker, config.client_id)

    async def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # What this client still holds goes with it: the application may publish it again.
        for _topic, publish_id in self._inflight.values():
            self._report(publish_id, "lost", "the broker client was replaced before an answer")
        self._inflight.clear()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        sock = self._sock
        if sock is not None and self._sock_client is client:
            client.disconnect()
            self._flush()  # writes the DISCONNECT; paho then closes the socket
            if self._sock is sock:
                client.on_socket_close = None
                self._detach()
                sock.close()

    async def _fall_back_to_311(self) -> None:
        logger.warning("%s does not speak MQTT 5; using MQTT 3.1.1", self.config.broker)
        await self._stop_client()
        self._protocol = paho.MQTTv311
        self._start_client()

    # --- the connection: connect, read, write, keep alive, reconnect ---------------

    async def _keep_connected(self, client: _Client) -> None:
        """Connect; tick paho's keep-alive while connected; after a drop or a failed attempt,
        wait (1 s, doubling up to `reconnect_max`; 1 s again after a connection the broker
        accepted) and connect again. Until the client is replaced or stopped."""
        config = self.config
        delay = 1.0
        self._failures = 0
        while client is self._client:
            try:
                if await self._connect_once(client):
                    delay = 1.0
            except Exception:
                # A bug, not the network: said with its traceback; the connection (if any)
                # goes, and this loop goes on, so the edge never stays unconnected.
                logger.exception("the connection to %s failed unexpectedly", config.broker)
                HEALTH.failing(HEALTH_CHECK, "connection failed unexpectedly (see the log)")
                if self._sock is not None and self._sock_client is client:
                    self._break(self._sock)
            if client is not self._client:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, float(config.reconnect_max))

    async def _connect_once(self, client: _Client) -> bool:
        """One connection, from the TCP connect to its loss; True if the broker accepted it."""
        config = self.config
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                sock = await open_broker_socket(config.host, config.port, config.tls)
        except (OSError, TimeoutError) as exc:
            self._failures += 1
            reason = str(exc) or type(exc).__name__
            # Logged once per streak (and per new reason) by the health check.
            logger.debug("cannot connect to %s: %s (attempt %s)", config.broker, reason, self._failures)
            HEALTH.failing(HEALTH_CHECK, f"cannot connect: {reason}")
            return False
        if client is not self._client:
            sock.close()
            return False
        if self._failures > 1:
            logger.info("reached %s after %s attempts", config.broker, self._failures)
        self._failures = 0
        lost = self._lost = asyncio.Event()
        self._accepted = False
        client.prepared = sock
        self._sock, self._sock_client = sock, client
        self._writing = False
        sock.hold = self._paused
        assert self._loop is not None
        if not self._paused:
            self._loop.add_reader(sock.fileno(), self._on_readable)
        client.reconnect()  # queues the CONNECT on this socket
        self._schedule_flush()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), TICK)
            except TimeoutError:
                client.loop_misc()  # PINGREQ when due; a broker silent too long is a drop
        return self._accepted

    def _detach(self) -> None:
        sock, self._sock, self._sock_client = self._sock, None, None
        if sock is None:
            return
        assert self._loop is not None
        fd = sock.fileno()
        self._loop.remove_reader(fd)
        if self._writing:
            self._loop.remove_writer(fd)
            self._writing = False
        if self._lost is not None:
            self._lost.set()

    def _break(self, sock: _BrokerSocket) -> None:
        """Give up this connection after a failure paho did not handle: it is closed here,
        said to the application like any drop, and `_keep_connected` connects again."""
        client = self._sock_client
        if sock is not self._sock or client is None:
            return
        self._detach()
        sock.close()
        if client is self._client:
            self._on_disconnect(client, None, None, ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho closes its socket (a drop, a protocol error, our DISCONNECT): just before."""
        if sock is self._sock:
            self._detach()

    def _on_readable(self) -> None:
        client, sock = self._sock_client, self._sock
        if client is None or sock is None or self._paused:
            return
        sock.drained = False
        for _ in range(READ_TURN):
            try:
                rc = client.loop_read()
            except Exception:
                # A bug, in a callback or in paho: paho's half-read packet state is now
                # unknown, so the connection goes (and the message comes again after it).
                logger.exception("reading from %s failed; reconnecting", self.config.broker)
                self._break(sock)
                return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # paho closed the connection and said why (on_disconnect)
            if sock.drained or self._paused or self._sock is not sock:
                return
        # Bytes may wait in the socket's buffer, where the selector does not see them.
        assert self._loop is not None
        self._loop.call_soon(self._on_readable)

    def _on_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho queued a packet: written at the end of this loop turn, with the others."""
        if not self._in_write:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_due and not self._writing:
            self._flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        client, sock = self._sock_client, self._sock
        if client is None or sock is None:
            return
        self._in_write = True
        try:
            client.loop_write()  # paho's packets into the buffer, a QoS 0 on_publish each
        except Exception:
            logger.exception("writing to %s failed; reconnecting", self.config.broker)
            self._break(sock)
            return
        finally:
            self._in_write = False
        if self._sock is not sock:
            return  # closed: a DISCONNECT written, or an error
        try:
            done = sock.flush()
        except OSError as exc:
            logger.info("writing to %s failed: %s", self.config.broker, exc)
            sock.abort()  # the reader sees the broken connection; paho reports it
            return
        blocked = not done or client.want_write()
        if blocked != self._writing:
            assert self._loop is not None
            if blocked:
                self._loop.add_writer(sock.fileno(), self._flush)
            else:
                self._loop.remove_writer(sock.fileno())
            self._writing = blocked

    def _pause(self) -> None:
        self._paused = True
        if self._sock is not None:
            self._sock.hold = True
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())

    def _resume(self) -> None:
        self._paused = False
        if self._sock is not None:
            self._sock.hold = False
            assert self._loop is not None
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._loop.call_soon(self._on_readable)  # what the buffer already holds

    def _take_place(self) -> None:
        self._waiting += 1
        if self._waiting >= MAX_QUEUED and not self._paused:
            self._pause()

    # --- paho's callbacks (on the loop, from loop_read and loop_write) ------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            if reason.value in UNSUPPORTED_PROTOCOL and self.config.protocol == "auto" and (
                self._protocol == paho.MQTTv5
            ):
                self._schedule_fallback()
                return
            logger.error("broker %s refused the connection: %s", self.config.broker, reason)
            HEALTH.failing(HEALTH_CHECK, f"refused: {reason}")
            return
        self._max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        # paho keeps 20 publishes unanswered by default, whatever the broker takes: about
        # 2,200 room messages a second out through a busy loop, less than one runmqtt
        # stores (the publisher fell further behind all through a 2,500 msg/s stream).
        # The broker's Receive Maximum (MQTT 5; 65,535 when it does not say) is the bound,
        # set for each connection (the broker may have changed), before paho sends anything
        # on it (its resends follow this callback). paho is pinned for this.
        receive_maximum = getattr(properties, "ReceiveMaximum", 0) if properties else 0
        self._client.fit_window(min(receive_maximum, PUBLISH_WINDOW) if receive_maximum > 0 else PUBLISH_WINDOW)
        self._accepted = True
        self._generation += 1
        protocol = 5 if self._protocol == paho.MQTTv5 else 4
        logger.info(
            "connected to %s (MQTT %s, session present: %s)",
            self.config.broker, "5" if protocol == 5 else "3.1.1", flags.session_present,
        )
        self._enqueue(
            {"type": "mqtt.connect", "session_present": bool(flags.session_present), "protocol": protocol}
        )
        self.connected.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if client is not self._client:
            logger.info("disconnected from %s", self.config.broker)
            return
        # From here on, acks for this connection's messages are dropped (the broker sends
        # them again); they must not reach the next connection before its CONNACK.
        self._generation += 1
        logger.warning("disconnected from %s: %s; reconnecting", self.config.broker, reason)
        HEALTH.failing(HEALTH_CHECK, f"disconnected: {reason}")
        self.connected.clear()
        self._enqueue({"type": "mqtt.disconnect", "reason": str(reason)})

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.error("the broker refused a subscription (mid %s): %s", mid, ", ".join(refused))
            HEALTH.failing(HEALTH_CHECK, f"subscription refused: {', '.join(refused)}")
        else:
            logger.info("subscribed (mid %s)", mid)
            HEALTH.ok(HEALTH_CHECK)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if client is self._client:
            self._published(mid, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if client is not self._client:
            return  # unacknowledged: the broker sends it again on the current connection
        props = message.properties
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # Brokers should refuse such topics; if one passes it, the application refuses
            # it (invalid_topic) instead of the server failing on it.
            topic = bytes(message._topic).decode("utf-8", "replace")
        event: MessageEvent = {
            "type": "mqtt.message",
            "topic": topic,
            "payload": bytes(message.payload),
            "qos": message.qos,
            "retain": bool(message.retain),
            "dup": bool(message.dup),
            "properties": _properties(props),
            "ack_id": None,
        }
        self.received += 1
        if message.qos > 0:
            ack_id = next(self._ack_ids)
            self._unacked[ack_id] = (self._generation, message.mid, message.qos)
            event["ack_id"] = ack_id
        self._enqueue(event)

    # --- the application's side ------------------------------------------------------

    def _schedule_fallback(self) -> None:
        if self._fallback is None:
            self._fallback = asyncio.create_task(self._fall_back_to_311())

    async def _receive(self) -> IncomingEvent:
        """The application's `receive`: the next event, freeing its place in the queue."""
        return self._taken(await self._queue.get())

    def _receive_nowait(self) -> IncomingEvent | None:
        """The scope's RECEIVE_NOWAIT: the next event if one is queued, else None."""
        try:
            event = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._taken(event)

    def _taken(self, event: IncomingEvent) -> IncomingEvent:
        if event["type"] not in LOOP_EVENTS:
            self._waiting -= 1
            if self._paused and self._waiting <= MAX_QUEUED // 2:
                self._resume()
        return event

    def _published(self, mid: int, reason: ReasonCode) -> None:
        topic, publish_id = self._inflight.pop(mid, ("?", None))
        if reason.is_failure:
            # Refused for good (not authorized, quota, payload format): paho does not resend it.
            self.refused += 1
            logger.error("the broker refused a publish on %s: %s; dropped", shorten(topic), reason)
            self._report(publish_id, "refused", str(reason))
        else:
            self.published += 1
            self._report(publish_id, "accepted", _REASON_NAMES.get(id(reason)) or str(reason))

    def _report(self, publish_id: int | None, outcome: Outcome, reason: str) -> None:
        """Tell the application what became of a publish it gave an id (see PublishedEvent)."""
        if publish_id is not None:
            event: PublishedEvent = {
                "type": "mqtt.published", "publish_id": publish_id,
                "outcome": outcome, "reason": reason,
            }
            self._queue.put_nowait(event)

    def _enqueue(self, event: IncomingEvent) -> None:
        self._queue.put_nowait(event)
        self._take_place()

    async def _send(self, event: dict[str, Any]) -> None:
        """Every reply of the application: checked here, then handed to paho."""
        client = self._client
        kind = event.get("type")
        if kind == "mqtt.drained":
            self._drained.set()
            return
        if kind == "mqtt.ack":
            generation, mid, qos = self._unacked.pop(event["ack_id"])
            if client is not None and generation == self._generation:
                client.ack(mid, qos)
            return
        if client is None:
            logger.warning("dropping %s: the broker client is being replaced", kind)
            if kind == "mqtt.publish":
                self._report(event.get("publish_id"), "lost", "no broker client")
            return
        if kind == "mqtt.publish":
            self._publish(client, event)
        elif kind == "mqtt.subscribe":
            rc, _ = client.subscribe([(topic, event["qos"]) for topic in event["topics"]])
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                logger.info("not connected; subscriptions are made again on connect")
        elif kind == "mqtt.unsubscribe":
            client.unsubscribe(event["topics"])
        else:
            raise MqttServerError(f"the application sent an unknown event type {kind!r}")

    def _publish(self, client: paho.Client, event: dict[str, Any]) -> None:
        """Hand one PUBLISH to paho, or drop it (logged) when no retry could ever deliver it."""
        topic, payload, qos = event["topic"], event["payload"], event["qos"]
        publish_id = event.get("publish_id")
        size = _packet_size(topic, payload, qos)
        if self._max_packet is not None and size > self._max_packet:
            self.refused += 1
            logger.error("dropping a publish on %s: %s bytes, over the broker's maximum packet "
                         "size of %s", shorten(topic), size, self._max_packet)
            self._report(publish_id, "refused", f"{size} bytes, over the maximum packet size")
            return
        try:
            info = client.publish(topic, payload, qos=qos, retain=event.get("retain", False))
        except ValueError as exc:  # paho's own refusals: an invalid topic, a payload too large
            self.refused += 1
            logger.error("dropping a publish on %s: %s", shorten(topic), exc)
            self._report(publish_id, "refused", str(exc))
            return
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # paho's queue is full: try again later
            logger.warning("not publishing on %s now: %s", shorten(topic), paho.error_string(info.rc))
            self._report(publish_id, "lost", paho.error_string(info.rc))
            return
        # Not connected: paho keeps QoS 1/2 messages and sends them after reconnecting.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.refused += 1
            logger.error("dropping a publish on %s: %s", shorten(topic), paho.error_string(info.rc))
            self._report(publish_id, "refused", paho.error_string(info.rc))
            return
        if qos > 0:
            self._inflight[info.mid] = (topic, publish_id)
        elif info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report(publish_id, "accepted", "QoS 0: handed to the client")
        else:  # QoS 0 while not connected: paho drops it
            self._report(publish_id, "lost", paho.error_string(info.rc))


# What every paho Properties object holds before any property is set: `json()` walks all
# 27 property names per message, so a PUBLISH with none (the usual case) skips it.
_UNSET_PROPERTIES = frozenset(vars(Properties(PacketTypes.PUBLISH)))


def _properties(props: Properties | None) -> dict[str, Any]:
    if props is None or vars(props).keys() <= _UNSET_PROPERTIES:
        return {}
    data: dict[str, Any] = props.json()
    return data


def _packet_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of the PUBLISH packet: fixed header, topic, packet id, properties, payload."""
    body = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + 1 + len(payload)
    return 1 + (1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4) + body

