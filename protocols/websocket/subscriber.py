"""One local socket of a room as the hub sees it: its place in the room's message stream.

A socket is SYNCING while its consumer reads from the database (history at
connect, a gap, a layer recovery): frames the hub has for it meanwhile are held
(at most HELD_LIMIT; beyond that, dropped and read from the database again).
It is LIVE once caught up: a frame whose `seq` follows the last one written is
offered to its `Outlet` at once; a repeat is skipped; a gap (a message the
layer or this hub dropped, or one the outlet refused) makes it SYNCING again
and runs a catch-up from the database. CLOSED: nothing more.

Catch-ups and access checks run one at a time in a task of the socket's own,
kept here and cancelled by `close`; a failure there ends the socket (it would
otherwise silently stop receiving) and is logged.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bridge.instruments import delivered
from bridge.probes import DATABASE_AWAY
from protocols.websocket.outlet import ClientGone, Outlet

logger = logging.getLogger(__name__)

HELD_LIMIT = 500  # frames held for a SYNCING socket; more are read from the database


class State(enum.Enum):
    SYNCING = "syncing"
    LIVE = "live"
    CLOSED = "closed"


class Subscriber:
    """Owned by one consumer: `catch_up()` writes what was stored after `last_seq` (and
    advances it), `recheck(event)` answers whether the socket lost its access (and closed
    it), `fail(reason)` ends the socket."""

    # One per idle socket: slots, not a dict per instance.
    __slots__ = ("room", "user_id", "outlet", "_catch_up", "_recheck", "_fail", "state", "last_seq", "held",
                 "held_overflow", "_want_catch_up", "_access_events", "_task", "_started", "_paused")

    def __init__(
        self,
        *,
        room: str,
        user_id: int | None,
        outlet: Outlet,
        catch_up: Callable[[], Awaitable[None]],
        recheck: Callable[[dict[str, Any]], Awaitable[bool]],
        fail: Callable[[str], None],
    ) -> None:
        self.room = room
        self.user_id = user_id
        self.outlet = outlet
        self._catch_up = catch_up
        self._recheck = recheck
        self._fail = fail
        self.state = State.SYNCING
        self.last_seq = 0
        # Made on first use: most sockets never hold a frame after their history.
        self.held: deque[tuple[int | None, str]] | None = None
        self.held_overflow = False
        self._want_catch_up = False
        self._access_events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        # Jobs wait for the first `go_live`: until then the consumer is still checking
        # access and reading history itself, and a change it raced with is checked after.
        self._started = False
        self._paused = False

    # --- from the hub (synchronous: one slow socket must not hold up the room) ---

    def offer_message(self, seq: int, text: str, frame: bytes | None = None) -> bool:
        """True when written now (the hub counts deliveries, once per event). `frame`: `text`
        serialized once for every socket (`server.text_frame`); held frames keep only `text`."""
        if self.state is State.LIVE:
            if seq == self.last_seq + 1 and self.outlet.offer(text, frame):
                self.last_seq = seq
                return True
            if seq <= self.last_seq:
                return False  # a repeat
            self.state = State.SYNCING
            self._hold(seq, text)
            self._start_catch_up()
        elif self.state is State.SYNCING:
            self._hold(seq, text)
        return False

    def offer_run(self, run: Sequence[tuple[int, str, bytes]], joined: bytes) -> int:
        """Consecutive messages (seq, text, frame), `joined` their frames: written in one go
        when this socket is live at the run's start and its outlet writes at once; else one by
        one (repeats skipped, a gap caught up). How many were written now."""
        if self.state is State.LIVE and run[0][0] == self.last_seq + 1 and self.outlet.offer_bytes(joined):
            self.last_seq = run[-1][0]
            return len(run)
        written = 0
        for seq, text, frame in run:
            written += self.offer_message(seq, text, frame)
        return written

    def offer_frame(self, text: str, frame: bytes | None = None) -> None:
        """A frame without a place in the stream (presence, telemetry): at most once."""
        if self.state is State.LIVE:
            self.outlet.offer(text, frame)
        elif self.state is State.SYNCING:
            self._hold(None, text)

    def access_changed(self, event: dict[str, Any]) -> None:
        if self.state is State.CLOSED:
            return
        self._access_events.append(event)
        self._run()

    def recover(self) -> None:
        """The layer is back: ask again for access (changes may have been lost), then catch up."""
        if self.state is State.CLOSED:
            return
        self._access_events.append({"reason": "layer_recovered"})
        self.state = State.SYNCING
        self._paused = False  # the catch-up, not `resume`, makes it live again
        self._start_catch_up()

    # --- from the consumer ------------------------------------------------------------

    def pause(self) -> None:
        """Hold frames while the consumer handles a client's frame, so that its answers
        (an `ack`) come before what the hub had meanwhile, as when each socket was a
        channel-layer member and handled one event at a time."""
        if self.state is State.LIVE:
            self.state = State.SYNCING
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.go_live()

    def go_live(self) -> None:
        """The consumer wrote what the database had: write what was held, then go live."""
        if self.state is State.CLOSED:
            return
        if not self._started:
            self._started = True
            self._run()
        held, overflow = self.held or deque(), self.held_overflow
        self.held, self.held_overflow = None, False
        while held:
            seq, text = held.popleft()
            if seq is None:
                self.outlet.offer(text)
            elif not self._write(seq, text):
                held.appendleft((seq, text))
                overflow = True
                break
        if overflow:
            self.held = held
            self._start_catch_up()
            return
        self.state = State.LIVE

    def close(self) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.held = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    # --- inside ----------------------------------------------------------------------

    def _write(self, seq: int, text: str) -> bool:
        """True when written (or a repeat); False for a gap or a refused frame."""
        if seq <= self.last_seq:
            return True
        if seq != self.last_seq + 1 or not self.outlet.offer(text):
            return False
        self.last_seq = seq
        delivered("web")  # held ones: few, counted one by one
        return True

    def _hold(self, seq: int | None, text: str) -> None:
        if self.held is None:
            self.held = deque()
        if len(self.held) < HELD_LIMIT:
            self.held.append((seq, text))
        else:
            self.held_overflow = True

    def _start_catch_up(self) -> None:
        self._want_catch_up = True
        self._run()

    def _run(self) -> None:
        wanted = self._access_events or (self._want_catch_up and self.state is State.SYNCING)
        if self._task is None and self._started and wanted:
            self._task = asyncio.ensure_future(self._jobs())
            self._task.add_done_callback(self._job_done)

    async def _jobs(self) -> None:
        while self.state is not State.CLOSED:
            if self._access_events:
                # One check answers every change so far, but a logout names its session.
                events = {e.get("session"): e for e in self._access_events}
                self._access_events.clear()
                for event in events.values():
                    if await self._recheck(event):
                        self.close()
                        return
            elif self._want_catch_up and self.state is State.SYNCING:
                self._want_catch_up = False
                await self._catch_up()
                self.go_live()
            else:
                return

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            if self.state is not State.CLOSED:
                self._run()  # asked for while the last job was finishing
            return
        if isinstance(exc, ClientGone):
            reason = str(exc)
        elif isinstance(exc, DATABASE_AWAY):  # an outage, not a bug: the page reconnects with `after`
            logger.warning("websocket of room %s: catch-up or access check failed, the database is "
                           "unavailable (%s); closing it", self.room, exc)
            reason = "the database is unavailable"
        else:
            logger.error("websocket of room %s: catch-up or access check failed; closing it",
                         self.room, exc_info=exc)
            reason = f"{type(exc).__name__}: {exc}"
        self.close()
        self._fail(reason)
