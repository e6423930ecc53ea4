"""`ws/rooms/<room>/`: history first, then live messages and presence; posts from the page."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError

from bridge import jsontext, layer
from bridge.access import can_read, check_chat_command
from bridge.auth import session_live, token_live
from bridge.envelope import Envelope, message_envelope
from bridge.exceptions import (
    AuthRequired,
    BridgeError,
    Forbidden,
    InvalidInput,
    RateLimited,
    RoomNotFound,
    TooLarge,
)
from bridge.instruments import WEBSOCKETS, delivered, refused
from bridge.layer import LayerMember
from bridge.logcontext import bind
from bridge.models import Identity, Room
from bridge.names import devices_group, room_access_group, room_group, user_access_group
from bridge.ratelimit import athrottle, limiter
from bridge.selectors import message_history, room_get, room_visible
from bridge.services.access import session_tag
from bridge.services.identities import identity_for_user
from bridge.services.messages import amessage_post
from bridge.services.presence import presence_join, presence_leave, presence_list
from protocols.websocket.lifecycle import track, untrack
from protocols.websocket.presence import PresenceRenewer

logger = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # a sender that keeps going over its rate limit
CLOSE_INVALID = 4400
# The credentials the socket opened with no longer hold: logged out, deactivated,
# password changed, token revoked (or a bad token at the handshake).
CLOSE_UNAUTHORIZED = 4401
# Not (or no longer) allowed to read the room: not a member, removed, room made private.
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_CODES = {401: CLOSE_UNAUTHORIZED, 403: CLOSE_FORBIDDEN, 404: CLOSE_NOT_FOUND}


# Messages per history frame: the next page is read from the database only once this
# one is written, so a connection holds one page of a room's history at most.
HISTORY_PAGE = 200


def _history_page(room: Room, after: int | None) -> list[Envelope]:
    """The latest messages (`after` None), or the next page after `after`."""
    if after is None:
        batch = message_history(room=room, limit=settings.BRIDGE_HISTORY_LIMIT)
    else:
        batch = message_history(room=room, after=after, limit=HISTORY_PAGE)
    return [message_envelope(m, room_slug=room.slug) for m in batch]


class ClientGone(Exception):
    """The socket takes nothing more: the peer went away, or its send buffer stayed full."""


# A `message` frame around an envelope already encoded (json.dumps' own separators).
_MESSAGE_FRAME = '{"type": "message", "message": %s}'
_FRAME_EVENTS = frozenset({"room.message", "room.messages", "room.presence"})


class RoomConsumer(LayerMember, AsyncWebsocketConsumer):
    """The channel layer is best effort here: while Redis is away the socket is served
    (history, posts) without live messages, and caught up from the database when
    the layer answers again (`layer_recovered_hook`)."""

    room: Room | None = None
    access_groups: list[str] = []  # replaced (never mutated) per connection
    identity: Identity | None = None
    last_seq = 0
    refused_in_a_row = 0
    closed_for_rate = False
    left = False
    present = False  # this connection has a presence row (and is in the renewer)

    # --- lifecycle ---------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        timeout = settings.BRIDGE_WS_SEND_TIMEOUT

        async def bounded_send(message: Any) -> None:
            """Every send waits while the server's write buffer is full (uvicorn's backpressure),
            at most `timeout` seconds: a client that does not read is then let go."""
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError as exc:
                raise ClientGone(f"its send buffer stayed full for {timeout} s") from exc
            except OSError as exc:  # uvicorn's ClientDisconnected: the peer is gone
                raise ClientGone(f"it went away ({exc.__class__.__name__})") from exc

        try:
            await super().__call__(scope, receive, bounded_send)
        except ClientGone as exc:
            # Said goodbye for it: without this, a socket closed while we were writing
            # left its user "online" until the presence row expired.
            logger.info("websocket %s let go: %s", self.channel_name, exc)
            await self._leave()
        finally:
            # Even if a handler failed otherwise (and `disconnect` never ran): the user
            # goes offline now, not when the row expires a presence TTL later.
            await asyncio.shield(self._leave_presence())

    async def connect(self) -> None:
        """Called on the handshake. Refusals are accepted first so the client can read why.

        The access groups are joined before access is checked, so a change
        committed in between still reaches this socket (and re-checks it).
        """
        slug = self.scope["url_route"]["kwargs"]["room"]
        user = self.scope.get("user")
        # This consumer's task logs about this room and user from here on.
        bind(room=slug, sender=f"user:{user.username}" if user and user.is_authenticated else "anonymous")
        try:
            if "auth_error" in self.scope:
                raise self.scope["auth_error"]
            after = self._after_param()
            room = await database_sync_to_async(room_get)(slug=slug)
            await self._join_access_groups(room, user)
            if not await database_sync_to_async(room_visible)(room, user):
                raise Forbidden("This room is private: only its members may join it.")
        except BridgeError as exc:
            await self._leave_access_groups()
            await self.accept()
            await self.send_error(exc)
            await self.close(code=CLOSE_CODES.get(exc.status, CLOSE_INVALID))
            return
        self.room = room
        WEBSOCKETS.inc()
        track(self)
        # Join before reading history, so nothing stored in between is missed. If the
        # layer is down, serve anyway: the groups are joined and the gap filled on recovery.
        await self.join(room_group(room.slug))
        await self.join(devices_group(room.slug))
        await self.accept()
        await self._send_since(after)
        await self._announce_join(user)

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def _leave(self) -> None:
        """Leave the room once: no more fan-out, presence offline."""
        if self.left:
            return
        self.left = True
        await self._leave_access_groups()
        if self.room is None:
            return
        WEBSOCKETS.dec()
        untrack(self)
        await self.leave(room_group(self.room.slug))
        await self.leave(devices_group(self.room.slug))
        await self._leave_presence()

    async def _leave_presence(self) -> None:
        if not self.present or self.room is None:
            return
        self.present = False
        PresenceRenewer.current().connections.discard(self.channel_name)
        try:
            gone = await database_sync_to_async(presence_leave)(
                room=self.room, connection=self.channel_name
            )
        except DatabaseError:
            logger.warning("could not record that %s left; its presence expires on its own",
                           self.channel_name, exc_info=True)
            return
        if gone is not None:
            await self._presence(gone, "offline")

    # --- from the client ---------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.room is None or self.closed_for_rate:
            return  # frames already queued when we closed: nobody reads the answers
        try:
            await athrottle("ws", self._sender_key())
        except RateLimited as exc:
            await self._over_rate(exc)
            return
        self.refused_in_a_row = 0
        try:
            frame = self._decode(text_data, bytes_data)
            await self._handle(frame)
        except BridgeError as exc:
            logger.info("websocket %s refused a frame: %s %s", self.channel_name, exc.code, exc.detail)
            await self.send_error(exc)

    def _sender_key(self) -> str:
        """Every frame counts against its sender: the signed-in user (all its sockets), else the socket."""
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return f"socket:{self.channel_name}"

    async def _over_rate(self, exc: RateLimited) -> None:
        """An error frame while the sender is over its rate; one that keeps going is closed (1008).

        More refusals in a row than the burst means the client ignores the errors.
        """
        self.refused_in_a_row += 1
        if self.refused_in_a_row == 1:
            logger.info("websocket %s (%s) is over its rate", self.channel_name, self._sender_key())
        if self.refused_in_a_row > limiter("ws").rate.burst:
            logger.warning("websocket %s (%s) kept sending over its rate: closed with 1008",
                           self.channel_name, self._sender_key())
            self.closed_for_rate = True
            await self.close(code=CLOSE_POLICY)
            return
        await self.send_error(exc)

    def _decode(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
        if text_data is None:
            raise InvalidInput("Send JSON text frames, not binary ones.", code="invalid_frame")
        if len(text_data.encode("utf-8", "surrogatepass")) > settings.BRIDGE_MAX_FRAME:
            raise TooLarge(f"Frames are limited to {settings.BRIDGE_MAX_FRAME} bytes.")
        frame = jsontext.loads(text_data, what="The frame")
        if not isinstance(frame, dict):
            raise InvalidInput("A frame is a JSON object with a 'type'.", code="invalid_frame")
        return frame

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind != "message":
            raise InvalidInput(f"Unknown frame type {kind!r}.", code="unknown_type")
        assert self.room is not None
        if self.identity is None:
            self.identity = await database_sync_to_async(identity_for_user)(self.scope["user"])
        if isinstance(frame.get("text"), str):
            await database_sync_to_async(check_chat_command)(
                self.scope["user"], self.room, frame["text"]
            )
        result = await amessage_post(
            room=self.room,
            sender=self.identity,
            origin="web",
            text=frame.get("text", ""),
            data=frame.get("data"),
            client_key=frame.get("client_id"),
        )
        # An extension of the contract: tells the sender its message is stored.
        ack = {"type": "ack", "client_id": frame.get("client_id"), "id": result.envelope["id"]}
        await self.send(text_data=json.dumps({**ack, "seq": result.envelope["seq"]}))

    # --- access ---------------------------------------------------------------

    async def _join_access_groups(self, room: Room, user: Any) -> None:
        self.access_groups = [room_access_group(room.slug)]
        if user is not None and user.is_authenticated:
            self.access_groups.append(user_access_group(user.pk))
        for group in self.access_groups:
            await self.join(group)

    async def _leave_access_groups(self) -> None:
        for group in self.access_groups:
            await self.leave(group)
        self.access_groups = []

    async def access_changed(self, event: dict[str, Any]) -> None:
        """Who may read the room, or this user's credentials, changed: ask again.

        Called for the room's privacy or members, and for the user's logout,
        deactivation, password, groups or tokens. Closes with 4401 or 4403 (after
        an `error` frame saying why) when this socket lost its right to the room.
        """
        await self._recheck_access(event)

    async def _recheck_access(self, event: dict[str, Any]) -> bool:
        """Close the socket if it lost its right to the room; True when it did."""
        if self.room is None:
            return False
        refusal = await database_sync_to_async(self._access_refusal)(event)
        if refusal is None:
            return False
        logger.info("websocket %s closed: %s (%s)", self.channel_name, refusal.code, event.get("reason"))
        await self.send_error(refusal)
        await self.close(code=CLOSE_CODES.get(refusal.status, CLOSE_FORBIDDEN))
        return True

    def _access_refusal(self, event: dict[str, Any]) -> BridgeError | None:
        """Why this socket may no longer read its room, or None (runs in a database thread)."""
        assert self.room is not None
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            token_id = self.scope.get("api_token")
            session_key = getattr(self.scope.get("session"), "session_key", None)
            if token_id is not None:
                live = token_live(token_id)
            else:
                live = event.get("session") != (session_tag(session_key) if session_key else None)
                live = live and session_live(session_key, user)
            if not live:
                return AuthRequired("Your sign-in ended (logged out, deactivated, new password "
                                    "or revoked token): sign in again.", code="signed_out")
            user = get_user_model().objects.filter(pk=user.pk).first()
        room = Room.objects.filter(pk=self.room.pk).first()
        if room is None:
            return RoomNotFound("This room was deleted.")
        if not can_read(user, room):
            return Forbidden("You are no longer allowed to read this room.", code="not_a_member")
        return None

    # --- from the room group -----------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes stale database connections before every handler: a thread hop
        per event and socket, so one per delivery in a busy room. These handlers only
        write frames (a gap is read through database_sync_to_async, which closes stale
        connections itself), so they skip it; every other event goes the usual way."""
        if message["type"] in _FRAME_EVENTS:
            await getattr(self, message["type"].replace(".", "_"))(message)
            return
        await super().dispatch(message)

    async def room_message(self, event: dict[str, Any]) -> None:
        """A message stored in the room. Fills any gap from the database first."""
        message: Envelope = event["message"]
        seq = message["seq"]
        if seq <= self.last_seq:
            return
        if seq > self.last_seq + 1:
            await self._send_since(self.last_seq, history_frame=False)
            return
        self.last_seq = seq
        encoded = event.get("json") or json.dumps(message)
        await self.send(text_data=_MESSAGE_FRAME % encoded)
        delivered("web")

    async def room_messages(self, event: dict[str, Any]) -> None:
        """Several messages stored at once, ascending `seq`, each already JSON-encoded
        by the sender of the event: the frame is built around it, not encoded again."""
        for item in event["messages"]:
            seq = item["seq"]
            if seq <= self.last_seq:
                continue
            if seq > self.last_seq + 1:
                await self._send_since(self.last_seq, history_frame=False)  # also sends the rest
                continue
            self.last_seq = seq
            await self.send(text_data=_MESSAGE_FRAME % item["json"])
            delivered("web")

    async def layer_recovered_hook(self) -> None:
        """The layer is back (our groups joined again): access changes announced meanwhile
        were lost, so ask again; then send what was stored meanwhile."""
        if self.room is None or await self._recheck_access({"reason": "layer_recovered"}):
            return
        await self._send_since(self.last_seq, history_frame=False)

    async def room_presence(self, event: dict[str, Any]) -> None:
        await self.send(
            text_data=json.dumps({"type": "presence", "who": event["who"], "state": event["state"]})
        )

    async def devices_telemetry(self, event: dict[str, Any]) -> None:
        """New readings of a device of this room (the devices panel); at most once."""
        frame = {"type": "telemetry", "device": event["device"], "metrics": event["metrics"]}
        await self.send(text_data=json.dumps(frame))

    # --- helpers -----------------------------------------------------------

    def _after_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        values = query.get("after")
        if not values:
            return None
        return jsontext.whole_number(values[0], what="'after'", code="invalid_after", minimum=0)

    async def _send_since(self, after: int | None, *, history_frame: bool = True) -> None:
        """History from the database, a page per frame, each read once the last is written.

        History frames say `"more": true` while further history frames follow (an
        extension of the contract: the first frame is still `history`). As gap fill
        (`history_frame=False`) the messages go out as `message` frames.
        """
        assert self.room is not None
        cursor = after
        while True:
            page = await database_sync_to_async(_history_page)(self.room, cursor)
            more = cursor is not None and len(page) == HISTORY_PAGE
            if history_frame:
                await self.send(text_data=json.dumps({"type": "history", "messages": page, "more": more}))
            else:
                for message in page:
                    if message["seq"] > self.last_seq:
                        await self.send(text_data=json.dumps({"type": "message", "message": message}))
                        delivered("web")
            if page:
                self.last_seq = max(self.last_seq, page[-1]["seq"])
                cursor = page[-1]["seq"]
            if not more:
                break
        if after is not None:
            self.last_seq = max(self.last_seq, after)

    async def _announce_join(self, user: Any) -> None:
        assert self.room is not None
        first = False
        if user is not None and user.is_authenticated:
            self.identity = await database_sync_to_async(identity_for_user)(user)
            first = await database_sync_to_async(presence_join)(
                room=self.room, identity=self.identity, connection=self.channel_name,
                ttl=timedelta(seconds=settings.BRIDGE_PRESENCE_TTL),
            )
            self.present = True
            PresenceRenewer.current().connections.add(self.channel_name)
            if first:
                await self._presence(self.identity, "online")
        # Everyone here now, yourself included: when another tab of yours came first,
        # no "online" event is sent for this one.
        present = await database_sync_to_async(presence_list)(room=self.room)
        for who in present:
            if not (first and who == self.identity):
                await self.room_presence({"who": who.as_sender(), "state": "online"})

    async def _presence(self, identity: Identity, state: str) -> None:
        assert self.room is not None
        await layer.group_send(
            room_group(self.room.slug),
            {"type": "room.presence", "who": identity.as_sender(), "state": state, "origin": "web"},
        )

    async def send_error(self, exc: BridgeError) -> None:
        refused("web", exc.code)
        await self.send(text_data=json.dumps({"type": "error", **exc.as_dict()}))


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Every WebSocket path that is not a room: an `error` frame, then close 4404.

    Without it the router raised "No route found" and the server answered the
    handshake with a 500 and a traceback.
    """

    async def connect(self) -> None:
        logger.info("websocket handshake for unknown path %r refused", self.scope.get("path"))
        await self.accept()
        detail = "No such WebSocket endpoint: rooms are at ws/rooms/<room>/."
        await self.send(text_data=json.dumps({"type": "error", "code": "not_found", "detail": detail}))
        await self.close(code=CLOSE_NOT_FOUND)
