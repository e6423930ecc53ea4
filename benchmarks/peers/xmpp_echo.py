"""A bare slixmpp echo component: the anchor of the XMPP ingress scenario.

What any component bridging a MUC room does at the least, and nothing more:
it joins the room as one occupant (creating it as an instant room, XEP-0045
10.1.2, when it is new), and for every live groupchat message from someone
else sends the same body on, as one chat message, to `--to`. No storage, no
ordering, no rate limits, no identities.

Writes `--ready-file` once it is in the room (the harness waits for it).
Run: python -m benchmarks.peers.xmpp_echo --jid bridge.localhost --secret S --port 5347 \
         --room lobby@conference.localhost --to listener@localhost/bench --ready-file ready
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from xml.etree import ElementTree as ET

from slixmpp import Iq, Message, Presence
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS = "jabber:component:accept"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
MUC_OWNER = f"{MUC}#owner"
NICK = "echo"


class Echo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.occupant = f"{NICK}@{args.jid}"
        self.me = f"{args.room}/{NICK}"
        self.xmpp = ComponentXMPP(args.jid, args.secret, args.host, args.port)
        self.xmpp.add_event_handler("session_start", self._joined_stream)
        self.xmpp.register_handler(Callback("echo", MatchXPath(f"{{{NS}}}message"), self._on_message))
        self.xmpp.add_event_handler("presence", self._on_presence)
        self.ready = asyncio.Event()

    def _joined_stream(self, _: object) -> None:
        pres = self.xmpp.make_presence(pfrom=self.occupant, pto=self.me)
        muc = ET.SubElement(pres.xml, f"{{{MUC}}}x")
        ET.SubElement(muc, f"{{{MUC}}}history", maxstanzas="0")
        pres.send()

    def _on_presence(self, pres: Presence) -> None:
        if str(pres["from"]) != self.me or self.ready.is_set():
            return
        codes = {s.get("code") for s in pres.xml.iter(f"{{{MUC_USER}}}status")}
        if "201" in codes:  # a new room, locked until its owner accepts the defaults
            iq: Iq = self.xmpp.make_iq_set(ifrom=self.occupant, ito=self.args.room)
            query = ET.SubElement(iq.xml, f"{{{MUC_OWNER}}}query")
            ET.SubElement(query, "{jabber:x:data}x", type="submit")
            iq.send(callback=lambda _: self.ready.set())
        else:
            self.ready.set()

    def _on_message(self, msg: Message) -> None:
        xml = msg.xml
        if xml.get("type") != "groupchat" or xml.get("from", "") == self.me:
            return
        if xml.find("{urn:xmpp:delay}delay") is not None:
            return
        body = xml.find(f"{{{NS}}}body")
        if body is None or not body.text:
            return
        self.xmpp.make_message(mto=self.args.to, mfrom=self.occupant, mbody=body.text, mtype="chat").send()

    async def run(self) -> None:
        self.xmpp.connect(self.args.host, self.args.port)
        await asyncio.wait_for(self.ready.wait(), 60)
        await asyncio.to_thread(Path(self.args.ready_file).write_text, "ready\n")
        await asyncio.Event().wait()  # until the harness stops it (SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jid", required=True, help="the component's address")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the server's component port")
    parser.add_argument("--room", required=True)
    parser.add_argument("--to", required=True, help="where every message is echoed (a full JID)")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    # Made inside the running loop: slixmpp binds to the loop current when it is built.
    await Echo(args).run()


if __name__ == "__main__":
    main()
