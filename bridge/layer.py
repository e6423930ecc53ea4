"""Living with a channel layer that goes away: bounded calls, group memberships that heal.

The channel layer (Redis) is best effort by design: every receiver catches up
by `seq` from the database. So no consumer may die, and no request may hang,
because Redis is down, frozen or restarted empty:

- `layer_call` bounds one layer operation by LAYER_TIMEOUT and reports the
  layer's state to `HEALTH`; it returns False instead of raising.
- `LayerMember` (a consumer mixin) records the groups it joins, keeps its
  receive loop alive through outages, and is told `layer.recovered` when the
  layer answers again (or was restarted empty, which forgets every group):
  it joins its groups again and catches up from the database.
- `LayerWatch` (one per process and event loop, started by the first member)
  pings Redis every WATCH_INTERVAL seconds and notices failures and restarts
  (Redis's `run_id` changes); it runs under the process's `Supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull
from django.conf import settings
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.health import HEALTH
from bridge.probes import CHANNEL_LAYER
from bridge.supervisor import Supervisor

logger = logging.getLogger(__name__)

# Seconds one layer operation may take before it counts as failed. A post must not
# wait for a frozen Redis (redis-py's socket timeout is 30 s); receivers fill the gap.
LAYER_TIMEOUT = 1.0
WATCH_INTERVAL = 1.0  # seconds between pings of the channel layer's Redis
# Members are told again this many pings after a recovery: other processes notice the
# recovery up to a ping later, and what they stored while still skipping fan-out is
# found by this second catch-up.
FOLLOW_UP = 3
RECEIVE_BACKOFF = (0.2, 5.0)  # a member's receive loop waits this long (doubling) after a failure
# What a layer operation raises when Redis is away, frozen or full (OverflowError: a
# value msgpack cannot carry, which must not end the consumer either).
LAYER_ERRORS = (RedisError, OSError, TimeoutError, ChannelFull, OverflowError)


# Pings that time out in a row before the watch takes the layer for down (a refused
# connection counts at once).
TIMEOUTS_BEFORE_DOWN = 2
TIMEOUTS = (TimeoutError, RedisTimeoutError)

# Without a watch in this process (a web process serving only the API), a failed call
# makes the next ones skip the layer for this many seconds instead of each waiting.
SKIP_AFTER_FAILURE = 5.0
_last_failure = -SKIP_AFTER_FAILURE


def layer_failed(exc: BaseException, what: str) -> None:
    global _last_failure
    _last_failure = time.monotonic()
    HEALTH.failing(CHANNEL_LAYER, f"{what}: {type(exc).__name__}: {exc}")


def layer_down() -> bool:
    """True while this process's watch saw the layer fail and not yet recover (without a
    watch: for SKIP_AFTER_FAILURE seconds after a failed call)."""
    watch = LayerWatch.current()
    if watch is not None:
        return watch.down
    return time.monotonic() - _last_failure < SKIP_AFTER_FAILURE


async def layer_call(call: Awaitable[Any], what: str) -> bool:
    """Await one channel-layer operation within LAYER_TIMEOUT; False (logged once) if it failed."""
    try:
        await asyncio.wait_for(call, LAYER_TIMEOUT)
    except ChannelFull:
        return False  # the receiver is behind, the layer is fine: it catches up by seq
    except LAYER_ERRORS as exc:  # the caller goes on without it
        layer_failed(exc, what)
        return False
    return True


async def group_send(group: str, message: dict[str, Any]) -> bool:
    """Best-effort `group_send`: skipped while this process knows the layer is down."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return True
    if layer_down():
        return False
    return await layer_call(layer.group_send(group, message), "group_send")


async def send(channel: str, message: dict[str, Any]) -> bool:
    """Best-effort `send` to one channel (a wake-up): skipped while the layer is down."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return True
    if layer_down():
        return False
    return await layer_call(layer.send(channel, message), "send")


class LayerWatch:
    """Pings Redis; on recovery (or a restart of Redis), tells every live member."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LayerWatch] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.members: weakref.WeakSet[LayerMember] = weakref.WeakSet()
        self._down = False
        self.up = asyncio.Event()  # set while the layer answers: receive loops wait on it
        self.up.set()
        self.run_id: str | None = None
        self.recoveries = 0
        self._follow_up = 0
        self.supervisor = Supervisor("layer", backoff_max=5.0)
        self._client: Any = None
        self._timeouts = 0

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value:
            self.up.clear()
        else:
            self.up.set()

    @classmethod
    def current(cls) -> LayerWatch | None:
        try:
            return cls._by_loop.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    @classmethod
    def ensure(cls) -> LayerWatch | None:
        """This loop's watch, started on first use; None without Redis (in-memory layer)."""
        if not settings.REDIS_URL:
            return None
        loop = asyncio.get_running_loop()
        watch = cls._by_loop.get(loop)
        if watch is None:
            watch = cls._by_loop[loop] = cls()
            watch.supervisor.every("watch", WATCH_INTERVAL, watch.check)
        return watch

    async def check(self) -> None:
        import redis.asyncio as aioredis

        if self._client is None:  # one connection, kept: a new one per ping is slow under load
            self._client = aioredis.Redis.from_url(
                str(settings.REDIS_URL), socket_timeout=LAYER_TIMEOUT, socket_connect_timeout=LAYER_TIMEOUT
            )
        try:
            info = await self._client.info("server")
        except (aioredis.RedisError, OSError) as exc:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()
            # A refused or reset connection is an outage; one slow answer on a busy machine
            # may not be, and taking the layer for down skips every fan-out: a timeout
            # counts only when the ping before it failed too.
            self._timeouts = self._timeouts + 1 if isinstance(exc, TIMEOUTS) else 0
            if self.down or not isinstance(exc, TIMEOUTS) or self._timeouts >= TIMEOUTS_BEFORE_DOWN:
                self.down = True
                layer_failed(exc, "ping")
            return
        self._timeouts = 0
        run_id = str(info.get("run_id", ""))
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        if self.down or restarted:
            self.down = False
            HEALTH.ok(CHANNEL_LAYER)
            if restarted:
                logger.warning("the channel layer's Redis restarted: joining every group again")
            self._follow_up = FOLLOW_UP
            await self.tell_members()
        elif self._follow_up:
            self._follow_up -= 1
            if not self._follow_up:
                await self.tell_members()

    async def tell_members(self) -> None:
        """Every member gets `layer.recovered` through its own channel, in its own order."""
        from channels.layers import get_channel_layer

        self.recoveries += 1
        layer = get_channel_layer()
        for member in list(self.members):
            name = getattr(member, "channel_name", None)
            if layer is not None and name:
                await layer_call(layer.send(name, {"type": "layer.recovered"}), "recovery")


class LayerMember:
    """Mixin for Channels consumers (before the consumer class in the bases).

    Use `await self.join(group)` / `await self.leave(group)` instead of the
    layer's group_add/group_discard, and implement `layer_recovered_hook`
    (called after the groups are joined again) to catch up from the database.
    """

    channel_layer: Any
    channel_name: str
    _groups: set[str]
    _channel_receive: Callable[[], Awaitable[dict[str, Any]]]

    # Channels' AsyncConsumer assigns `channel_receive` (the layer's receive for our
    # channel) in __call__; wrapping it here keeps that loop alive through outages,
    # where the consumer (and a WebSocket or a whole runmqtt with it) would die.
    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        return self._guarded_receive

    @channel_receive.setter
    def channel_receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._channel_receive = receive
        watch = LayerWatch.ensure()
        if watch is not None:
            watch.members.add(self)

    async def _guarded_receive(self) -> dict[str, Any]:
        delay = RECEIVE_BACKOFF[0]
        while True:
            try:
                return await self._channel_receive()
            except LAYER_ERRORS as exc:  # the layer is down: wait, then listen again
                layer_failed(exc, "receive")
            watch = LayerWatch.current()
            if watch is None:
                await asyncio.sleep(delay)
            else:
                # Listen again as soon as the watch sees the layer answer (or after `delay`).
                watch.down = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.up.wait(), delay)
                await asyncio.sleep(RECEIVE_BACKOFF[0])
            delay = min(delay * 2, RECEIVE_BACKOFF[1])

    def _member_groups(self) -> set[str]:
        if not hasattr(self, "_groups"):
            self._groups = set()
        return self._groups

    async def join(self, group: str) -> bool:
        """Join `group` (kept even if the layer is down now: joined again on recovery)."""
        self._member_groups().add(group)
        return await layer_call(self.channel_layer.group_add(group, self.channel_name), "group_add")

    async def leave(self, group: str) -> None:
        self._member_groups().discard(group)
        await layer_call(self.channel_layer.group_discard(group, self.channel_name), "group_discard")

    async def layer_recovered(self, event: dict[str, Any]) -> None:
        """The layer answers again: join every group again, then catch up."""
        for group in sorted(self._member_groups()):
            await layer_call(self.channel_layer.group_add(group, self.channel_name), "group_add")
        await self.layer_recovered_hook()

    async def layer_recovered_hook(self) -> None:
        """Called after the groups are joined again: fetch what was missed from the database."""
