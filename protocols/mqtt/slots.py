"""Stable, distinct MQTT client ids for replicas that have no identity of their own.

`MQTT_CLIENT_ID=bridge-{slot}` makes each runmqtt claim the lowest free slot
(`bridge-1`, `bridge-2`, ...) with a lease in Redis, so N replicas resume the
broker's N persistent sessions (and what the broker queued for them) whatever
their container ids. A lease is `owner|nonce` with a TTL, renewed every third of
it; the owner is `$HOSTNAME` (Docker sets it to the container id, which a
restarted container keeps), so a container restarted after a crash takes its own
slot back at once instead of waiting for the TTL. A process that finds its
lease taken by another stops (`SlotLost`): two processes must never share a
client id, each would disconnect the other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

import redis.asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

PLACEHOLDER = "{slot}"
MAX_SLOTS = 256
# Renew only our own lease (compare, then extend or delete): atomic in Redis.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return -1"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class SlotLost(Exception):
    """Another process holds this process's client id now: it must stop using it."""


def owner_name() -> str:
    return os.environ.get("HOSTNAME") or f"{socket.gethostname()}:{os.getpid()}"


class ClientIdSlot:
    """Claim, keep and release one slot of `template` (which contains `{slot}`)."""

    def __init__(self, redis_url: str, template: str, *, ttl: float = 30.0, owner: str | None = None) -> None:
        if PLACEHOLDER not in template:
            raise ValueError(f"{template!r} has no {PLACEHOLDER}")
        self.template = template
        self.ttl_ms = int(ttl * 1000)
        self.owner = owner or owner_name()
        self.value = f"{self.owner}|{secrets.token_hex(8)}"
        self.slot: int | None = None
        self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5, decode_responses=True)

    def _key(self, slot: int) -> str:
        return f"bridge:mqtt-client-slot:{self.template}:{slot}"

    @property
    def client_id(self) -> str:
        if self.slot is None:
            raise RuntimeError("no slot claimed yet")
        return self.template.replace(PLACEHOLDER, str(self.slot))

    async def claim(self, *, retry_max: float = 10.0) -> str:
        """The client id of the slot this process now holds; waits (with back-off) for Redis."""
        delay = 0.5
        while True:
            try:
                self.slot = await self._claim_once()
                logger.info("MQTT client id %s (slot lease as %s)", self.client_id, self.owner)
                return self.client_id
            except RedisError as exc:
                logger.warning("cannot claim an MQTT client id slot (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max)

    async def _claim_once(self) -> int:
        keys = [self._key(slot) for slot in range(1, MAX_SLOTS + 1)]
        held = await self._redis.mget(keys)
        for slot, current in enumerate(held, start=1):
            if current is not None and str(current).split("|", 1)[0] == self.owner:
                # Our own container restarted: take the slot back (the old holder is gone).
                await self._redis.set(keys[slot - 1], self.value, px=self.ttl_ms)
                return slot
        for slot, key in enumerate(keys, start=1):
            if await self._redis.set(key, self.value, px=self.ttl_ms, nx=True):
                return slot
        raise RedisError(f"all {MAX_SLOTS} MQTT client id slots are leased")

    async def keep(self) -> None:
        """Renew the lease every third of its TTL until cancelled; raises SlotLost."""
        assert self.slot is not None
        key = self._key(self.slot)
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                renewed = await self._redis.eval(_RENEW, 1, key, self.value, self.ttl_ms)
                if renewed == -1 and not await self._redis.set(key, self.value, px=self.ttl_ms, nx=True):
                    raise SlotLost(f"MQTT client id {self.client_id} is now held by another process")
            except RedisError as exc:
                # Redis away: nobody else can take the slot either; renew when it is back.
                logger.warning("cannot renew the MQTT client id lease: %s", exc)

    async def release(self) -> None:
        if self.slot is not None:
            try:
                await self._redis.eval(_RELEASE, 1, self._key(self.slot), self.value)
            except RedisError as exc:
                logger.warning("cannot release the MQTT client id lease (it expires by itself): %s", exc)
        await self._redis.aclose()
