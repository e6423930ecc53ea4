"""`ws/rooms/<room>/`: history first, then live messages and presence; posts from the page."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
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
    Unavailable,
)
from bridge.instruments import WEBSOCKETS, delivered, refused
from bridge.logcontext import bind
from bridge.models import Identity, Room
from bridge.names import parse_chat_command, room_group
from bridge.probes import DATABASE_AWAY, refused_while_database_away
from bridge.ratelimit import athrottle, limiter
from bridge.selectors import message_history, room_get, room_visible
from bridge.services.access import session_tag
from bridge.services.identities import identity_for_user
from bridge.services.messages import amessage_post
from bridge.services.presence import presence_join, presence_leave, presence_list
from protocols.websocket.hub import RoomHub
from protocols.websocket.lifecycle import track, untrack
from protocols.websocket.outlet import ClientGone, Outlet
from protocols.websocket.presence import PresenceRenewer
from protocols.websocket.server import FRAME_WRITER
from protocols.websocket.subscriber import Subscriber

logger = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # a sender that keeps going over its rate limit
CLOSE_INVALID = 4400
# The credentials the socket opened with no longer hold: logged out, deactivated,
# password changed, token revoked (or a bad token at the handshake).
CLOSE_UNAUTHORIZED = 4401
# Not (or no longer) allowed to read the room: not a member, removed, room made private.
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TRY_AGAIN = 1013  # the database is away: reconnecting shortly works (not final)
CLOSE_CODES = {401: CLOSE_UNAUTHORIZED, 403: CLOSE_FORBIDDEN, 404: CLOSE_NOT_FOUND, 503: CLOSE_TRY_AGAIN}


# Messages per history frame: the next page is read from the database only once this
# one is written, so a connection holds one page of a room's history at most.
HISTORY_PAGE = 200
# Frames queued behind a send that waits for a slow client; beyond, dropped and read
# from the database once the client reads again (or it is let go after the send timeout).
OUTLET_LIMIT = 256


def _history_page(room: Room, after: int | None) -> list[Envelope]:
    """The latest messages (`after` None), or the next page after `after`."""
    if after is None:
        batch = message_history(room=room, limit=settings.BRIDGE_HISTORY_LIMIT)
    else:
        batch = message_history(room=room, after=after, limit=HISTORY_PAGE)
    return [message_envelope(m, room_slug=room.slug) for m in batch]


class RoomConsumer(AsyncWebsocketConsumer):
    """A socket has no channel-layer channel of its own: the process's `RoomHub` offers it
    its room's frames and access changes (`self.sub`), written through its `Outlet`. The
    layer is best effort: while Redis is away the socket is served (history, posts)
    without live messages, and caught up from the database when the layer answers again.
    """

    room: Room | None = None
    identity: Identity | None = None
    sub: Subscriber | None = None
    refused_in_a_row = 0
    closed_for_rate = False
    left = False
    present = False  # this connection has a presence row (and is in the renewer)
    gone: str | None = None  # why the socket was given up (its client stopped reading, left)
    _receiving = False

    # --- lifecycle ---------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' loop, without a channel: only the client's events are dispatched here
        (no task and no layer receive per socket). A socket its outlet gives up on (the
        client stopped reading, or left) is ended even while it waits for the client."""
        timeout = settings.BRIDGE_WS_SEND_TIMEOUT

        async def bounded_send(message: Any) -> None:
            """Accept and close wait while the server's write buffer is full (uvicorn's
            backpressure), at most `timeout` seconds: a client that does not read is let go."""
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError as exc:
                raise ClientGone(f"its send buffer stayed full for {timeout} s") from exc
            except OSError as exc:  # uvicorn's ClientDisconnected: the peer is gone
                raise ClientGone(f"it went away ({exc.__class__.__name__})") from exc

        self.scope = scope
        self.channel_layer = None
        # Names this socket in presence rows, rate limits and logs (it used to be the channel).
        self.connection = f"ws.{uuid.uuid4().hex}"
        # uvicorn with our protocol class: the hub's frames, serialized once, written as they are.
        write_frame = scope.get("extensions", {}).get(FRAME_WRITER)
        self.outlet = Outlet(send, timeout=timeout, limit=OUTLET_LIMIT, on_gone=self._let_go,
                             write_frame=write_frame)
        self._send_other = bounded_send
        self.base_send = self._send
        self._task = asyncio.current_task()
        try:
            await self._run(receive)
        except ClientGone as exc:
            # Said goodbye for it: without this, a socket closed while we were writing
            # left its user "online" until the presence row expired.
            logger.info("websocket %s let go: %s", self.connection, exc)
            await self._leave()
        finally:
            # Even if a handler failed otherwise (and `disconnect` never ran): out of the
            # hub, and the user goes offline now, not when the row expires a presence TTL later.
            self.outlet.close()
            await asyncio.shield(self._leave())

    async def _run(self, receive: Any) -> None:
        try:
            while self.gone is None:
                self._receiving = True
                try:
                    message = await receive()
                finally:
                    self._receiving = False
                await self.dispatch(message)
        except StopConsumer:
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.gone is None or (task is not None and task.uncancel() > 0):
                raise  # not ours: the server is stopping this task
        raise ClientGone(self.gone)

    def _let_go(self, reason: str) -> None:
        """The outlet gave up on the client: end this socket (waiting for the client or not)."""
        if self.gone is not None:
            return
        self.gone = reason
        if self._receiving and self._task is not None:
            self._task.cancel()

    async def _send(self, message: dict[str, Any]) -> None:
        """Text frames through the outlet, in order with the hub's; the handshake and close
        straight to the server's send (bounded by the send timeout)."""
        if message["type"] == "websocket.send" and message.get("text") is not None:
            await self.outlet.write(message["text"])
            return
        if message["type"] == "websocket.close" and self.sub is not None:
            self.sub.close()  # no frames after the close
        await self._send_other(message)

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
            with refused_while_database_away():
                room, after = await self._join(slug, user)
        except BridgeError as exc:
            await self._leave_hub()
            await self.accept()
            await self.send_error(exc)
            await self.close(code=CLOSE_CODES.get(exc.status, CLOSE_INVALID))
            return
        self.room = room
        WEBSOCKETS.inc()
        track(self)
        await self.accept()
        try:
            with refused_while_database_away():
                await self._send_since(after)
        except Unavailable as exc:  # the database went away between the checks and the history
            await self.send_error(exc)
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        assert self.sub is not None
        self.sub.go_live()
        try:
            await self._announce_join(user)
        except DATABASE_AWAY as exc:  # the socket serves on, shown online again once it reconnects
            logger.warning("websocket %s: presence not recorded, the database is unavailable: %s",
                           self.connection, exc)

    async def _join(self, slug: str, user: Any) -> tuple[Room, int | None]:
        """Into the room's hub once the credentials and `after` are checked, then access.
        Returns the room and `after`; raises the refusal (a BridgeError)."""
        if "auth_error" in self.scope:
            raise self.scope["auth_error"]
        after = self._after_param()
        room = await database_sync_to_async(room_get)(slug=slug)
        # In the hub before reading access or history, so that a change or a message
        # committed in between still reaches this socket. If the layer is down, serve
        # anyway: the groups are joined and the gap filled on recovery.
        self.sub = Subscriber(
            room=room.slug, user_id=user.pk if user is not None and user.is_authenticated else None,
            outlet=self.outlet, catch_up=self._catch_up, recheck=self._recheck_access,
            fail=self._let_go,
        )
        await RoomHub.current().subscribe(self.sub)
        if not await database_sync_to_async(room_visible)(room, user):
            raise Forbidden("This room is private: only its members may join it.")
        return room, after

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def _leave(self) -> None:
        """Leave the room once: no more fan-out, presence offline."""
        if self.left:
            return
        self.left = True
        await self._leave_hub()
        if self.room is None:
            return
        WEBSOCKETS.dec()
        untrack(self)
        await self._leave_presence()

    async def _leave_hub(self) -> None:
        if self.sub is not None:
            await RoomHub.current().unsubscribe(self.sub)

    async def _leave_presence(self) -> None:
        if not self.present or self.room is None:
            return
        self.present = False
        PresenceRenewer.current().connections.discard(self.connection)
        try:
            gone = await database_sync_to_async(presence_leave)(
                room=self.room, connection=self.connection
            )
        except DatabaseError:
            logger.warning("could not record that %s left; its presence expires on its own",
                           self.connection, exc_info=True)
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
        assert self.sub is not None
        self.sub.pause()
        try:
            with refused_while_database_away():
                frame = self._decode(text_data, bytes_data)
                await self._handle(frame)
        except BridgeError as exc:
            logger.info("websocket %s refused a frame: %s %s", self.connection, exc.code, exc.detail)
            await self.send_error(exc)
        finally:
            self.sub.resume()

    def _sender_key(self) -> str:
        """Every frame counts against its sender: the signed-in user (all its sockets), else the socket."""
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return f"socket:{self.connection}"

    async def _over_rate(self, exc: RateLimited) -> None:
        """An error frame while the sender is over its rate; one that keeps going is closed (1008).

        More refusals in a row than the burst means the client ignores the errors.
        """
        self.refused_in_a_row += 1
        if self.refused_in_a_row == 1:
            logger.info("websocket %s (%s) is over its rate", self.connection, self._sender_key())
        if self.refused_in_a_row > limiter("ws").rate.burst:
            logger.warning("websocket %s (%s) kept sending over its rate: closed with 1008",
                           self.connection, self._sender_key())
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
        # Only a `/cmd` needs the database before the store: ordinary messages skip a
        # trip to the database thread (a queue behind other sockets' stores).
        if isinstance(frame.get("text"), str) and parse_chat_command(frame["text"]) is not None:
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

    async def _recheck_access(self, event: dict[str, Any]) -> bool:
        """Who may read the room, or this user's credentials, changed (or the layer is
        back, and such changes may have been lost): ask again. Called by the hub for
        the room's privacy or members, and for the user's logout, deactivation,
        password, groups or tokens. Closes with 4401 or 4403 (after an `error` frame
        saying why) when this socket lost its right to the room; True when it did.
        """
        if self.room is None:
            return False
        refusal = await database_sync_to_async(self._access_refusal)(event)
        if refusal is None:
            return False
        logger.info("websocket %s closed: %s (%s)", self.connection, refusal.code, event.get("reason"))
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

    # --- from the hub ---------------------------------------------------------

    async def _catch_up(self) -> None:
        """A gap in the room's stream (or the layer is back): what was stored since, from the database."""
        assert self.sub is not None
        await self._send_since(self.sub.last_seq, history_frame=False)

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
        assert self.room is not None and self.sub is not None
        stream = self.sub
        cursor = after
        while True:
            page = await database_sync_to_async(_history_page)(self.room, cursor)
            more = cursor is not None and len(page) == HISTORY_PAGE
            if history_frame:
                await self.send(text_data=json.dumps({"type": "history", "messages": page, "more": more}))
            else:
                for message in page:
                    if message["seq"] > stream.last_seq:
                        await self.send(text_data=json.dumps({"type": "message", "message": message}))
                        stream.last_seq = message["seq"]
                        delivered("web")
            if page:
                stream.last_seq = max(stream.last_seq, page[-1]["seq"])
                cursor = page[-1]["seq"]
            if not more:
                break
        if after is not None:
            stream.last_seq = max(stream.last_seq, after)

    async def _announce_join(self, user: Any) -> None:
        assert self.room is not None
        first = False
        if user is not None and user.is_authenticated:
            self.identity = await database_sync_to_async(identity_for_user)(user)
            first = await database_sync_to_async(presence_join)(
                room=self.room, identity=self.identity, connection=self.connection,
                ttl=timedelta(seconds=settings.BRIDGE_PRESENCE_TTL),
            )
            self.present = True
            PresenceRenewer.current().connections.add(self.connection)
            if first:
                await self._presence(self.identity, "online")
        # Everyone here now, yourself included: when another tab of yours came first,
        # no "online" event is sent for this one.
        present = await database_sync_to_async(presence_list)(room=self.room)
        for who in present:
            if not (first and who == self.identity):
                frame = {"type": "presence", "who": who.as_sender(), "state": "online"}
                await self.send(text_data=json.dumps(frame))

    async def _presence(self, identity: Identity, state: str) -> None:
        assert self.room is not None
        await layer.group_send(
            room_group(self.room.slug),
            {"type": "room.presence", "who": identity.as_sender(), "state": state, "origin": "web",
             "room": self.room.slug},
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
