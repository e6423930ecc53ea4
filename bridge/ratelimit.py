"""Per-sender rate limits, one shape for every edge: a token bucket per sender.

Each edge has a rate (tokens per second, `<EDGE>_RATE`; 0 turns its limit off)
and a burst (`<EDGE>_BURST`, what a quiet sender may send at once), for the
edges `ws`, `api`, `mqtt` and `xmpp`. Keys are the edge's sender: a user, a
device id, an occupant's real JID.

    decision = await limiter("mqtt").atake("thermo-1", cost=len(batch))
    decision.granted, decision.allowed, decision.retry_after

With `REDIS_URL` set, the buckets live in Redis (one Lua script, one round
trip), so every process agrees on one sender's budget; without it (the
embedded default) in this process's memory. A Redis that fails or is slow
never blocks posting: the limiter falls back to this process's own buckets
for `REDIS_RETRY` seconds, reports `ratelimit.redis` to the health registry
(not critical: logged once when it fails, once when it recovers) and tries
Redis again after that.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from bridge.exceptions import RateLimited
from bridge.health import HEALTH

EDGES = ("ws", "api", "mqtt", "xmpp")
MAX_TRACKED = 10_000  # buckets kept in memory per edge; full ones are forgotten first
REDIS_TIMEOUT = 0.3  # seconds: a frozen Redis delays one post by this much, then is skipped
REDIS_RETRY = 5.0  # seconds on the in-memory buckets after a Redis failure
HEALTH_CHECK = "ratelimit.redis"

# KEYS[1]: the bucket; ARGV: rate per second, burst, cost. Returns {granted, retry_after}.
# Redis' own clock, so processes on several machines agree; floats travel as strings
# because Lua numbers returned to Redis are truncated to integers.
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(state[1]), tonumber(state[2])
if tokens == nil or stamp == nil then tokens, stamp = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local granted = math.min(cost, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if granted < cost then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""


@dataclass(frozen=True)
class Rate:
    """`per_second` tokens refilled per second (0: no limit), at most `burst` held."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second < 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_second >= 0 and burst >= 1, got {self}")

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


@dataclass(frozen=True)
class Decision:
    """`granted` of the `cost` asked for; `retry_after` seconds until one more token."""

    granted: int
    cost: int
    retry_after: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.granted >= self.cost


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class MemoryBuckets:
    """Token buckets in this process (the embedded default, and the fallback while Redis is out)."""

    rate: Rate
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, cost: int = 1) -> Decision:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(tokens=float(self.rate.burst), stamp=now)
        bucket.tokens = min(float(self.rate.burst), bucket.tokens + (now - bucket.stamp) * self.rate.per_second)
        bucket.stamp = now
        granted = min(cost, math.floor(bucket.tokens))
        bucket.tokens -= granted
        wait = 0.0 if granted >= cost else (1.0 - bucket.tokens) / self.rate.per_second
        return Decision(granted=granted, cost=cost, retry_after=wait)

    def _forget_full(self, now: float) -> None:
        """A bucket that has refilled is the same as no bucket: drop those first."""
        refill = self.rate.burst / self.rate.per_second
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < refill}
        if len(self._buckets) >= MAX_TRACKED:
            self._buckets.clear()  # full buckets for everyone is the safe direction


class RateLimiter:
    """One edge's limiter: `take` for sync callers (HTTP views), `atake` for async edges."""

    def __init__(self, edge: str, rate: Rate, *, redis_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.edge = edge
        self.rate = rate
        self.redis_url = redis_url
        self.clock = clock
        self.memory = MemoryBuckets(rate, clock)
        self._down_until = 0.0
        # Senders Redis refused, until their next token is due: a flood is refused here,
        # without a round trip per message (no process can add tokens sooner, others
        # only take them), so one flooder costs Redis about `rate` checks a second.
        self._refused: dict[str, float] = {}
        self._sync: Any = None  # the script on a sync client, made on first use
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None

    def take(self, key: str, cost: int = 1) -> Decision:
        if not self.rate.enabled or cost < 1:
            return Decision(granted=cost, cost=cost)
        if not self._use_redis():
            return self.memory.take(key, cost)
        if (known := self._known_refusal(key, cost)) is not None:
            return known
        if self._sync is None:
            client = redis.Redis.from_url(
                self.redis_url or "", socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            self._sync = client.register_script(_TAKE)
        try:
            reply = self._sync(keys=[self._key(key)], args=self._args(cost))
        except (redis.RedisError, OSError) as exc:
            return self._redis_failed(exc, key, cost)
        return self._decided(reply, key, cost)

    async def atake(self, key: str, cost: int = 1) -> Decision:
        if not self.rate.enabled or cost < 1:
            return Decision(granted=cost, cost=cost)
        if not self._use_redis():
            return self.memory.take(key, cost)
        if (known := self._known_refusal(key, cost)) is not None:
            return known
        try:
            reply = await asyncio.wait_for(
                self._async_script()(keys=[self._key(key)], args=self._args(cost)), REDIS_TIMEOUT
            )
        except (redis.RedisError, OSError, TimeoutError) as exc:
            return self._redis_failed(exc, key, cost)
        return self._decided(reply, key, cost)

    # --- helpers -----------------------------------------------------------

    def _use_redis(self) -> bool:
        return bool(self.redis_url) and self.clock() >= self._down_until

    def _async_script(self) -> Any:
        # A redis.asyncio client belongs to the loop it first ran on.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self.redis_url or "", socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            self._async = (loop, client.register_script(_TAKE))
        return self._async[1]

    def _key(self, key: str) -> str:
        return f"bridge:ratelimit:{self.edge}:{key}"

    def _args(self, cost: int) -> list[str]:
        return [repr(self.rate.per_second), str(self.rate.burst), str(cost)]

    def _decided(self, reply: Any, key: str, cost: int) -> Decision:
        HEALTH.ok(HEALTH_CHECK, critical=False)
        granted, wait = reply
        decision = Decision(granted=int(granted), cost=cost, retry_after=float(wait))
        if not decision.allowed:  # what is left is under one token until retry_after
            if len(self._refused) >= MAX_TRACKED:
                now = self.clock()
                self._refused = {k: t for k, t in self._refused.items() if t > now}
                if len(self._refused) >= MAX_TRACKED:
                    self._refused.clear()  # asking Redis again is the safe direction
            self._refused[key] = self.clock() + decision.retry_after
        return decision

    def _known_refusal(self, key: str, cost: int) -> Decision | None:
        until = self._refused.get(key)
        if until is None:
            return None
        wait = until - self.clock()
        if wait <= 0:
            del self._refused[key]
            return None
        return Decision(granted=0, cost=cost, retry_after=wait)

    def _redis_failed(self, exc: BaseException, key: str, cost: int) -> Decision:
        """Fail open to this process's buckets; Redis is tried again in REDIS_RETRY seconds."""
        self._down_until = self.clock() + REDIS_RETRY
        HEALTH.failing(
            HEALTH_CHECK,
            f"{type(exc).__name__}: {exc}; limiting per process for now",
            critical=False,
        )
        return self.memory.take(key, cost)


def refusal(edge: str, decision: Decision) -> RateLimited:
    """The error a sender over its rate gets, saying when to try again."""
    rate = limiter(edge).rate
    return RateLimited(
        f"Too many messages: {rate.per_second:g} per second and {rate.burst} at once are allowed; "
        f"try again in {decision.retry_after:.1f} s.",
        retry_after=decision.retry_after,
    )


def throttle(edge: str, key: str) -> None:
    """Take one token for `key` on `edge`, or raise RateLimited (for sync callers)."""
    decision = limiter(edge).take(key)
    if not decision.allowed:
        raise refusal(edge, decision)


async def athrottle(edge: str, key: str) -> None:
    """`throttle` for async callers: WebSocket consumers, the XMPP edge (keyed by real JID)."""
    decision = await limiter(edge).atake(key)
    if not decision.allowed:
        raise refusal(edge, decision)


def edge_rate(edge: str) -> Rate:
    """The settings of one edge: <EDGE>_RATE per second and <EDGE>_BURST."""
    if edge not in EDGES:
        raise ValueError(f"no rate limit for edge {edge!r}; edges are {', '.join(EDGES)}")
    prefix = edge.upper()
    return Rate(
        per_second=float(getattr(settings, f"{prefix}_RATE")),
        burst=int(getattr(settings, f"{prefix}_BURST")),
    )


@functools.cache
def limiter(edge: str) -> RateLimiter:
    """This process's limiter of an edge, built from settings once."""
    return RateLimiter(edge, edge_rate(edge), redis_url=settings.REDIS_URL)


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    # Tests override <EDGE>_RATE/_BURST and REDIS_URL: the next limiter() reads them again.
    if setting == "REDIS_URL" or setting.endswith(("_RATE", "_BURST")):
        limiter.cache_clear()
