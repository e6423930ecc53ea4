"""`XmppCommunicator`: drive an XMPP application in-process, like Channels' WebsocketCommunicator.

It plays the protocol server: stanzas go in as events with sensible defaults,
and what the application sends comes back as events, one at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async

from protocols.xmpp.events import XmppIqEvent, XmppMessageEvent, XmppPresenceEvent, XmppScope


class XmppCommunicator(ApplicationCommunicator):
    def __init__(
        self,
        application: Any,
        *,
        component: str = "bridge.localhost",
        muc_service: str = "conference.localhost",
        domain: str = "localhost",
    ) -> None:
        scope: XmppScope = {
            "type": "xmpp",
            "component": component,
            "muc_service": muc_service,
            "domain": domain,
        }
        super().__init__(application, scope)
        self.component = component
        self.muc_service = muc_service

    async def connect(self) -> None:
        await self.send_input({"type": "xmpp.connect"})

    async def drop(self, reason: str = "connection lost") -> None:
        await self.send_input({"type": "xmpp.disconnect", "reason": reason})

    async def message(self, **fields: Any) -> None:
        await self.send_input(self.message_event(**fields))

    async def messages(self, *each: dict[str, Any]) -> None:
        """Message stanzas that arrived back to back: one `xmpp.messages` event, in order."""
        await self.send_input({"type": "xmpp.messages", "messages": [self.message_event(**f) for f in each]})

    def message_event(self, **fields: Any) -> XmppMessageEvent:
        event: XmppMessageEvent = {
            "type": "xmpp.message",
            "id": "",
            "sender": "",
            "to": self.component,
            "message_type": "groupchat",
            "body": "",
            "stanza_id": "",
            "origin_id": "",
            "delayed": False,
            "error_condition": "",
            "subject": None,
        }
        event.update(fields)  # type: ignore[typeddict-item]
        return event

    async def presence(self, **fields: Any) -> None:
        event: XmppPresenceEvent = {
            "type": "xmpp.presence",
            "sender": "",
            "to": self.component,
            "presence_type": "available",
            "status_codes": [],
            "real_jid": "",
            "nick": "",
            "affiliation": "none",
            "role": "participant",
            "error_condition": "",
        }
        event.update(fields)  # type: ignore[typeddict-item]
        await self.send_input(event)

    async def iq(self, **fields: Any) -> None:
        """The answer to an IQ the application sent: a result unless `iq_type` says otherwise."""
        event: XmppIqEvent = {
            "type": "xmpp.iq",
            "id": "",
            "sender": "",
            "to": self.component,
            "iq_type": "result",
            "error_condition": "",
            "form": [],
            "items": [],
        }
        event.update(fields)  # type: ignore[typeddict-item]
        await self.send_input(event)

    async def sent(self, timeout: float = 2) -> dict[str, Any]:  # noqa: ASYNC109 - as in Channels
        """The next event the application sent to the server."""
        output: dict[str, Any] = await self.receive_output(timeout)
        return output

    async def nothing_sent(self, timeout: float = 0.2) -> bool:  # noqa: ASYNC109
        return await self.receive_nothing(timeout)

    async def close(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.cancel()
            try:
                await self.future
            except asyncio.CancelledError:
                pass
        # A database call the application was awaiting runs on in its thread after the cancel;
        # this no-op queues behind it there, so the test's database is not flushed under it.
        await database_sync_to_async(lambda: None)()
