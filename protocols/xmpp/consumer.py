"""The base class of XMPP applications: an event type names its handler, which calls a hook."""

from __future__ import annotations

from channels.consumer import AsyncConsumer

from bridge.instruments import refused
from protocols.xmpp.events import (
    XmppConnectEvent,
    XmppDisconnectEvent,
    XmppIqEvent,
    XmppMessageEvent,
    XmppMessagesEvent,
    XmppPresenceEvent,
    XmppScope,
)


class XmppConsumer(AsyncConsumer):
    """One instance per component connection; it outlives reconnects of the stream.

    Hooks: `connect` (the server accepted the component, after every reconnect),
    `disconnect` (the stream is gone; sends are dropped until the next connect),
    `receive_message`, `receive_presence` and `receive_iq` (one stanza each; IQs are the
    answers to the application's own requests), `receive_messages` (message stanzas that
    arrived back to back; by default `receive_message` for each, in order).
    """

    scope: XmppScope

    # --- dispatch (`xmpp.connect` runs `xmpp_connect`) --------------------------

    async def xmpp_connect(self, event: XmppConnectEvent) -> None:
        await self.connect()

    async def xmpp_disconnect(self, event: XmppDisconnectEvent) -> None:
        await self.disconnect(event["reason"])

    async def xmpp_message(self, event: XmppMessageEvent) -> None:
        await self.receive_message(event)

    async def xmpp_messages(self, event: XmppMessagesEvent) -> None:
        await self.receive_messages(event["messages"])

    async def xmpp_presence(self, event: XmppPresenceEvent) -> None:
        await self.receive_presence(event)

    async def xmpp_iq(self, event: XmppIqEvent) -> None:
        await self.receive_iq(event)

    # --- hooks ------------------------------------------------------------------

    async def connect(self) -> None:
        pass

    async def disconnect(self, reason: str) -> None:
        pass

    async def receive_message(self, event: XmppMessageEvent) -> None:
        pass

    async def receive_messages(self, events: list[XmppMessageEvent]) -> None:
        for event in events:
            await self.receive_message(event)

    async def receive_presence(self, event: XmppPresenceEvent) -> None:
        pass

    async def receive_iq(self, event: XmppIqEvent) -> None:
        pass

    # --- to the server ----------------------------------------------------------

    async def send_message(
        self,
        *,
        sender: str,
        to: str,
        body: str,
        message_type: str = "groupchat",
        id: str | None = None,
    ) -> None:
        """With `id`, it is the XEP-0359 origin-id too: the room's echo and archive carry it."""
        if id is None:
            await self.send(
                {"type": "xmpp.message", "sender": sender, "to": to, "body": body,
                 "message_type": message_type}
            )
        else:
            await self.send(
                {"type": "xmpp.message", "sender": sender, "to": to, "body": body,
                 "message_type": message_type, "id": id, "origin_id": id}
            )

    async def send_join(self, *, sender: str, to: str, history: int = 0) -> None:
        await self.send(
            {"type": "xmpp.presence", "sender": sender, "to": to, "join": True, "history": history}
        )

    async def send_leave(self, *, sender: str, to: str) -> None:
        await self.send(
            {"type": "xmpp.presence", "sender": sender, "to": to, "presence_type": "unavailable"}
        )

    async def send_error(
        self,
        *,
        sender: str,
        to: str,
        id: str,
        condition: str,
        text: str,
        error_type: str = "modify",
        stanza: str = "message",
    ) -> None:
        refused("xmpp", condition)
        await self.send(
            {"type": "xmpp.error", "sender": sender, "to": to, "id": id, "condition": condition,
             "text": text, "error_type": error_type, "stanza": stanza}
        )
