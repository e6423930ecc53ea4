"""The XMPP protocol server: one component connection (XEP-0114), translated to ASGI.

slixmpp's handlers here are synchronous and only enqueue: its coroutine
handlers run unordered and without backpressure. When the application falls
behind, the server stops reading from the socket until it catches up. The
connection is the server's job too: when the stream drops, it reconnects with
back-off and tells the application (`xmpp.disconnect`, then `xmpp.connect`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from slixmpp import Iq, Message, Presence
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bridge.health import HEALTH
from protocols.xmpp.config import XmppConfig
from protocols.xmpp.events import XmppIncoming, XmppMessageEvent, XmppOutgoing, XmppScope
from protocols.xmpp.stanzas import (
    build_error,
    build_iq,
    build_message,
    build_presence,
    iq_event,
    message_event,
    presence_event,
    register_stanza_plugins,
)

logger = logging.getLogger(__name__)

# The name of this edge's connection in the process's health registry.
HEALTH_CHECK = "xmpp"

Application = Callable[..., Coroutine[Any, Any, None]]

# Stop reading from the server above this many queued events; read again below the low mark.
QUEUE_HIGH = 2000
QUEUE_LOW = 500
# Message stanzas queued back to back go to the application as one `xmpp.messages` of at
# most this many: a burst from occupants is then stored in one transaction, not one each.
MAX_BATCH = 200


class XmppServer:
    def __init__(self, *, application: Application, config: XmppConfig) -> None:
        self.application = application
        self.config = config
        self.queue: asyncio.Queue[XmppIncoming] = asyncio.Queue()
        # The event that ended the last batch (not a message): the next one handed over.
        self._held: XmppIncoming | None = None
        self.connected = False
        self._session = asyncio.Event()
        self._gone = asyncio.Event()
        self._reading_paused = False
        register_stanza_plugins()
        self.xmpp = ComponentXMPP(config.component, config.secret, config.host, config.port)
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("disconnected", self._on_disconnected)
        self.xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        # slixmpp's 'message' event skips messages without a body (and errors go elsewhere):
        # one handler for every message stanza instead.
        self.xmpp.register_handler(
            Callback("bridge message", MatchXPath(f"{{{self.xmpp.default_ns}}}message"),
                     self._on_message)
        )
        self.xmpp.add_event_handler("presence", self._on_presence)
        # Answers to the application's IQs (room configuration, affiliations). Requests to the
        # component (get/set) are not the application's: slixmpp answers them with an error.
        self.xmpp.register_handler(
            Callback("bridge iq answer",
                     MatchXPath(f"{{{self.xmpp.default_ns}}}iq"), self._on_iq)
        )

    @property
    def scope(self) -> XmppScope:
        return {
            "type": "xmpp",
            "component": self.config.component,
            "muc_service": self.config.muc_service,
            "domain": self.config.domain,
        }

    # --- running --------------------------------------------------------------

    async def run(self) -> None:
        """Run the application and keep the connection up until cancelled."""
        HEALTH.starting(HEALTH_CHECK, "connecting")
        app = asyncio.create_task(self.application(self.scope, self._receive, self.send))
        link = asyncio.create_task(self._keep_connected())
        try:
            done, _ = await asyncio.wait([app, link], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # an application that fails stops the server, loudly
            raise RuntimeError("the XMPP application returned")
        finally:
            for task in (app, link):
                task.cancel()
            await asyncio.gather(app, link, return_exceptions=True)
            self.xmpp.cancel_connection_attempt()
            if self.connected:
                self.xmpp.abort()
            HEALTH.forget(HEALTH_CHECK)

    async def _keep_connected(self) -> None:
        delay = self.config.backoff_min
        while True:
            self._session.clear()
            self._gone.clear()
            logger.info("xmpp: connecting to %s:%s as %s", self.config.host, self.config.port,
                        self.config.component)
            self.xmpp.connect(self.config.host, self.config.port)
            session = asyncio.create_task(self._session.wait())
            gone = asyncio.create_task(self._gone.wait())
            try:
                await asyncio.wait([session, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                session.cancel()
                gone.cancel()
            if self._session.is_set():
                delay = self.config.backoff_min
                await self._gone.wait()
            # slixmpp would retry on its own with a back-off growing to minutes: ours is capped.
            self.xmpp.cancel_connection_attempt()
            logger.info("xmpp: reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.backoff_max)

    async def _receive(self) -> XmppIncoming:
        if self._held is not None:
            event, self._held = self._held, None
        else:
            event = await self.queue.get()
        if event["type"] == "xmpp.message" and not self.queue.empty():
            event = self._batch(event)
        if self._reading_paused and self.queue.qsize() <= QUEUE_LOW:
            self._reading_paused = False
            if self.xmpp.transport is not None:
                self.xmpp.transport.resume_reading()
        return event

    def _batch(self, first: XmppMessageEvent) -> XmppIncoming:
        """`first` and the message events queued right behind it, in order; the first other
        event is held for the next receive, so nothing is reordered."""
        batch = [first]
        while len(batch) < MAX_BATCH and not self.queue.empty():
            event = self.queue.get_nowait()
            if event["type"] != "xmpp.message":
                self._held = event
                break
            batch.append(event)
        if len(batch) == 1:
            return first
        return {"type": "xmpp.messages", "messages": batch}

    def _enqueue(self, event: XmppIncoming) -> None:
        logger.debug("xmpp: in %s", event)
        self.queue.put_nowait(event)
        if not self._reading_paused and self.queue.qsize() >= QUEUE_HIGH:
            self._reading_paused = True
            if self.xmpp.transport is not None:
                self.xmpp.transport.pause_reading()

    # --- slixmpp handlers: synchronous, enqueue only -------------------------

    def _on_session_start(self, _: Any) -> None:
        logger.info("xmpp: component %s is connected", self.config.component)
        self.connected = True
        self._reading_paused = False
        self._session.set()
        HEALTH.ok(HEALTH_CHECK)
        self._enqueue({"type": "xmpp.connect"})

    def _on_disconnected(self, reason: Any) -> None:
        was_connected = self.connected
        self.connected = False
        self._gone.set()
        HEALTH.failing(HEALTH_CHECK, f"disconnected: {reason or 'connection lost'}")
        if was_connected:
            logger.warning("xmpp: disconnected from the server: %s", reason or "connection lost")
            self._enqueue({"type": "xmpp.disconnect", "reason": str(reason or "connection lost")})

    def _on_connection_failed(self, reason: Any) -> None:
        logger.warning("xmpp: cannot connect to %s:%s: %s", self.config.host, self.config.port,
                       reason)
        HEALTH.failing(HEALTH_CHECK, f"cannot connect: {reason}")
        self._gone.set()

    def _on_message(self, msg: StanzaBase) -> None:
        assert isinstance(msg, Message)
        self._enqueue(message_event(msg))

    def _on_presence(self, pres: Presence) -> None:
        self._enqueue(presence_event(pres))

    def _on_iq(self, iq: StanzaBase) -> None:
        assert isinstance(iq, Iq)
        if iq.xml.get("type") in ("result", "error"):
            self._enqueue(iq_event(iq))
        else:
            iq.unhandled()  # feature-not-implemented, as slixmpp does for unhandled requests

    # --- from the application ---------------------------------------------------

    async def send(self, event: XmppOutgoing) -> None:
        """Every stanza leaves through here. While disconnected it is dropped: the application
        was told (`xmpp.disconnect`) and resends from its cursor after `xmpp.connect`."""
        if not self.connected:
            logger.debug("xmpp: not connected, dropped %s to %s", event["type"], event["to"])
            return
        logger.debug("xmpp: out %s", event)
        if event["type"] == "xmpp.message":
            self.xmpp.send(build_message(self.xmpp, event))
        elif event["type"] == "xmpp.presence":
            self.xmpp.send(build_presence(self.xmpp, event))
        elif event["type"] == "xmpp.error":
            self.xmpp.send(build_error(self.xmpp, event))
        elif event["type"] == "xmpp.iq":
            self.xmpp.send(build_iq(self.xmpp, event))
        else:
            raise ValueError(f"unknown XMPP event type {event['type']!r}")
