"""A standard XMPP client for tests: slixmpp logged in as a normal user, joining rooms.

Its handlers only enqueue; tests await what they expect with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from slixmpp import ClientXMPP, Message, Presence
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from protocols.xmpp.stanzas import NS_MUC_USER, register_stanza_plugins


@dataclass
class Seen:
    kind: str  # "groupchat", "chat", "error", "presence", ...
    sender: str
    body: str
    delayed: bool
    stanza_id: str
    error: str
    presence_type: str = ""
    role: str = ""  # an occupant's role in a room's presence (XEP-0045)


class XmppTestClient:
    def __init__(self, jid: str, password: str, *, port: int, ca_file: Path | None,
                 host: str = "127.0.0.1") -> None:
        """With `ca_file`: STARTTLS or nothing, the server's certificate checked against it
        (and its name against the JID's domain). Without: plain TCP, plain authentication
        (what a server should refuse)."""
        register_stanza_plugins()
        self.port = port
        self.host = host
        self.xmpp = ClientXMPP(jid, password)
        self.xmpp.enable_direct_tls = False
        if ca_file is not None:
            self.xmpp.enable_starttls = True
            self.xmpp.enable_plaintext = False
            self.xmpp.ca_certs = ca_file
        else:
            self.xmpp.enable_starttls = False
            self.xmpp.enable_plaintext = True
            self.xmpp.plugin["feature_mechanisms"].unencrypted_plain = True
        self.xmpp.whitespace_keepalive = False
        self.xmpp.register_plugin("xep_0313")
        self.inbox: asyncio.Queue[Seen] = asyncio.Queue()
        self.session = asyncio.Event()
        self.gone = asyncio.Event()
        self.xmpp.add_event_handler("session_start", lambda _: self.session.set())
        self.xmpp.add_event_handler("disconnected", lambda _: self.gone.set())
        self.refusals: list[str] = []
        for refusal in ("failed_all_auth", "no_auth", "connection_failed"):
            self.xmpp.add_event_handler(
                refusal, lambda _, name=refusal: (self.refusals.append(name), self.gone.set())
            )
        self.xmpp.register_handler(
            Callback("test messages", MatchXPath(f"{{{self.xmpp.default_ns}}}message"), self._on_message)
        )
        self.xmpp.add_event_handler("presence", self._on_presence)

    def _on_message(self, msg: Message) -> None:
        sid = msg.xml.find("{urn:xmpp:sid:0}stanza-id")
        self.inbox.put_nowait(Seen(
            kind=msg.xml.get("type") or "normal",
            sender=str(msg["from"]),
            body=msg["body"],
            delayed=msg.xml.find("{urn:xmpp:delay}delay") is not None,
            stanza_id=sid.get("id", "") if sid is not None else "",
            error=msg["error"]["condition"] if msg.xml.get("type") == "error" else "",
        ))

    def _on_presence(self, pres: Presence) -> None:
        self.inbox.put_nowait(Seen(
            kind="presence", sender=str(pres["from"]), body="", delayed=False, stanza_id="",
            error=pres["error"]["condition"] if pres.xml.get("type") == "error" else "",
            presence_type=pres.xml.get("type") or "available",
            role=(pres["muc"]["role"] or "") if pres.xml.find(f"{{{NS_MUC_USER}}}x") is not None else "",
        ))

    async def start(self, timeout: float = 15) -> None:
        self.session.clear()
        self.gone.clear()
        self.xmpp.connect(self.host, self.port)
        await asyncio.wait_for(self.session.wait(), timeout)
        self.xmpp.send_presence()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.xmpp.disconnect(wait=1)
            await asyncio.wait_for(self.gone.wait(), 5)

    def join(self, room: str, nick: str, *, history: int = 0) -> None:
        pres = self.xmpp.make_presence(pto=f"{room}/{nick}")
        pres.enable("muc_join")
        pres["muc_join"]["history"]["maxstanzas"] = str(history)
        pres.send()

    def leave(self, room: str, nick: str) -> None:
        self.xmpp.make_presence(pto=f"{room}/{nick}", ptype="unavailable").send()

    def change_nick(self, room: str, nick: str) -> None:
        """XEP-0045 7.6: an available presence to the new occupant address."""
        self.xmpp.make_presence(pto=f"{room}/{nick}").send()

    def say(self, room: str, body: str, *, origin_id: str | None = None) -> None:
        msg = self.xmpp.make_message(mto=room, mbody=body, mtype="groupchat")
        if origin_id:
            msg["id"] = origin_id
            msg["origin_id"]["id"] = origin_id
        msg.send()

    async def archive(self, room: str) -> list[tuple[str, str, str]]:
        """The room's archive (XEP-0313), oldest first: (nick, body, origin-id) of each message."""
        found: list[tuple[str, str, str]] = []
        async for result in self.xmpp.plugin["xep_0313"].iterate(jid=room, rsm={"max": 100}):
            inner = result["mam_result"]["forwarded"]["stanza"]
            origin = inner.xml.find("{urn:xmpp:sid:0}origin-id")
            found.append((inner["from"].resource, inner["body"],
                          origin.get("id", "") if origin is not None else ""))
        return found

    def tell(self, to: str, body: str) -> None:
        self.xmpp.make_message(mto=to, mbody=body, mtype="chat").send()

    async def expect(self, predicate: object, *, timeout: float = 15) -> Seen:
        """The next stanza matching `predicate` (a callable on Seen); others are kept aside."""
        assert callable(predicate)
        kept: list[Seen] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no matching stanza in {timeout} s; saw {kept[-10:]}")
                seen = await asyncio.wait_for(self.inbox.get(), remaining)
                if predicate(seen):
                    return seen
                kept.append(seen)
        finally:
            for item in kept:
                self.inbox.put_nowait(item)


@contextlib.asynccontextmanager
async def xmpp_client(
    jid: str, password: str, *, port: int, ca_file: Path | None
) -> AsyncIterator[XmppTestClient]:
    client = XmppTestClient(jid, password, port=port, ca_file=ca_file)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
