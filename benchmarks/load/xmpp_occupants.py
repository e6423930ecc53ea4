"""XMPP clients (slixmpp, STARTTLS) in one process: occupants that listen, or that send into a room.

`listen`: each client (joining the room with `--join`, else only receiving what
is addressed to it) times every message whose body carries a stamp of the
current run. Same lines as ws_listeners: one JSON line once every client is
ready; then, for each `<tag> <expect>` on stdin, one when every client has seen
`expect` messages of that run (or none came for `--idle` seconds).

`send`: each client joins the room; one JSON line once all are in; then, for
each `<tag> <count> <rate>` on stdin, the clients send `count` stamped
groupchat messages between them (`rate` per second in all, 0: as fast as the
stream takes them), each with its XEP-0359 origin-id, and answer one line.

Run: python -m benchmarks.load.xmpp_occupants listen --port 5222 --ca ca.crt --accounts occ-0,occ-1 \
         --password pw --domain localhost --room lobby@conference.localhost --join
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from pathlib import Path
from xml.etree import ElementTree as ET

from slixmpp import ClientXMPP, Message, Presence
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from benchmarks.load.stats import STAMP, stamp_text, summary

CLIENT_NS = "jabber:client"
MUC_NS = "http://jabber.org/protocol/muc"
SID_NS = "urn:xmpp:sid:0"
BODY = f"{{{CLIENT_NS}}}body"


class Phase:
    """What the clients have seen of one run."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.reset("", 0)

    def reset(self, tag: str, expect: int) -> None:
        self.tag, self.expect = f"r={tag};", expect
        self.latencies: array = array("d")
        self.counts = [0] * self.clients
        self.first: float | None = None
        self.last: float | None = None
        self.full = 0
        self.done = asyncio.Event()

    def seen(self, index: int, body: str) -> None:
        if not self.tag or self.tag not in body:
            return
        match = STAMP.search(body.encode())
        if match is None:
            return
        now = time.monotonic()
        self.latencies.append(now - float(match[1]))
        self.first = self.first or now
        self.last = now
        self.counts[index] += 1
        if self.counts[index] == self.expect:
            self.full += 1
            if self.full == self.clients:
                self.done.set()

    async def wait(self, idle: float) -> None:
        seen = -1
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), timeout=idle)
            except TimeoutError:
                if len(self.latencies) == seen:
                    return  # nothing new for `idle` seconds: the rest is lost
                seen = len(self.latencies)


class Occupant:
    """One account's stream; in the room as its account name when it joins."""

    def __init__(self, index: int, jid: str, password: str, args: argparse.Namespace, phase: Phase) -> None:
        self.index, self.args, self.phase = index, args, phase
        self.nick = jid.split("@", 1)[0]
        self.xmpp = ClientXMPP(f"{jid}/bench", password)
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_starttls = True
        self.xmpp.enable_plaintext = False
        self.xmpp.ca_certs = Path(args.ca)
        self.xmpp.whitespace_keepalive = False
        self.session = asyncio.Event()
        self.joined = asyncio.Event()
        self.xmpp.add_event_handler("session_start", lambda _: self.session.set())
        self.xmpp.register_handler(Callback("bench messages", MatchXPath(f"{{{CLIENT_NS}}}message"), self._on_message))
        self.xmpp.add_event_handler("presence", self._on_presence)

    def _on_message(self, msg: Message) -> None:
        body = msg.xml.find(BODY)
        if body is not None and body.text:
            self.phase.seen(self.index, body.text)

    def _on_presence(self, pres: Presence) -> None:
        if str(pres["from"]) == f"{self.args.room}/{self.nick}":
            self.joined.set()

    async def start(self) -> None:
        self.xmpp.connect(self.args.host, self.args.port)
        await asyncio.wait_for(self.session.wait(), 60)
        self.xmpp.send_presence()
        if self.args.join or self.args.mode == "send":
            pres = self.xmpp.make_presence(pto=f"{self.args.room}/{self.nick}")
            muc = ET.SubElement(pres.xml, f"{{{MUC_NS}}}x")
            ET.SubElement(muc, f"{{{MUC_NS}}}history", maxstanzas="0")
            pres.send()
            await asyncio.wait_for(self.joined.wait(), 60)

    def say(self, body: str, origin_id: str) -> None:
        msg = self.xmpp.make_message(mto=self.args.room, mbody=body, mtype="groupchat")
        msg["id"] = origin_id
        ET.SubElement(msg.xml, f"{{{SID_NS}}}origin-id", id=origin_id)
        msg.send()

    def stop(self) -> None:
        self.xmpp.disconnect(wait=0.5)


async def send(occupants: list[Occupant], tag: str, count: int, rate: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(count):
        if rate:
            due = started + n / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
        elif n % 20 == 19:
            await asyncio.sleep(0)  # let the streams write what is queued
        occupant = occupants[n % len(occupants)]
        # The origin-id is the bridge's idempotency key: unique across sender processes.
        occupant.say(stamp_text(time.monotonic(), tag, n), f"{tag}-{occupant.nick}-{n}")
    return {"sent": count, "seconds": round(loop.time() - started, 3)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("listen", "send"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True, help="the server's certificate (STARTTLS, pinned)")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--accounts", required=True, help="comma-separated local account names")
    parser.add_argument("--password", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--join", action="store_true", help="listen as an occupant of the room")
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()

    accounts = [a for a in args.accounts.split(",") if a]
    phase = Phase(len(accounts))
    occupants = [Occupant(i, f"{name}@{args.domain}", args.password, args, phase) for i, name in enumerate(accounts)]
    started = time.monotonic()
    await asyncio.gather(*(o.start() for o in occupants))
    reply({"ready": True, "clients": len(occupants), "connect_s": round(time.monotonic() - started, 2)})

    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if args.mode == "send":
            reply(await send(occupants, words[0], int(words[1]), float(words[2])))
            continue
        phase.reset(words[0], int(words[1]))
        await phase.wait(args.idle)
        result = summary(phase.latencies, first=phase.first, last=phase.last)
        result["complete"] = sum(1 for c in phase.counts if c >= phase.expect)
        reply(result)
    for occupant in occupants:
        occupant.stop()


def reply(body: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
