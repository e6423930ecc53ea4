"""The per-sender limiter: token buckets in memory, shared through Redis, failing open."""

from __future__ import annotations

import asyncio

import pytest

from bridge.health import HEALTH
from bridge.ratelimit import HEALTH_CHECK, MemoryBuckets, Rate, RateLimiter
from tests.support.processes import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = MemoryBuckets(Rate(per_second=2, burst=3), clock)
    assert [buckets.take("a").allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take("a")
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("a").allowed
    assert buckets.take("b").allowed  # per sender


def test_a_batch_is_granted_what_the_bucket_holds() -> None:
    buckets = MemoryBuckets(Rate(per_second=1, burst=5), Clock())
    decision = buckets.take("device", cost=8)
    assert (decision.granted, decision.allowed) == (5, False)
    assert buckets.take("device", cost=1).granted == 0


def test_a_rate_of_zero_is_no_limit() -> None:
    limiter = RateLimiter("ws", Rate(per_second=0, burst=1))
    assert all(limiter.take("a").allowed for _ in range(1000))


@pytest.mark.slow
async def test_processes_share_one_budget_through_redis(redis_url: str) -> None:
    rate = Rate(per_second=0.01, burst=5)
    first, second = RateLimiter("ws", rate, redis_url=redis_url), RateLimiter("ws", rate, redis_url=redis_url)
    key = f"shared-{free_port()}"
    grants = [(await first.atake(key)).allowed, first.take(key).allowed, (await second.atake(key)).allowed]
    grants += [second.take(key).allowed, (await first.atake(key)).allowed, (await second.atake(key)).allowed]
    assert grants == [True, True, True, True, True, False]
    decision = await first.atake(key, cost=3)
    assert decision.granted == 0 and decision.retry_after > 50


async def test_without_redis_the_limiter_fails_open_to_its_own_buckets(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter("api", Rate(per_second=1, burst=2), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert [(await limiter.atake("u")).allowed for _ in range(3)] == [True, True, False]
    assert limiter.take("v").allowed
    state = HEALTH.snapshot()[HEALTH_CHECK]
    assert not state.ok and not state.critical
    assert sum("ratelimit.redis: failing" in r.getMessage() for r in caplog.records) == 1
    HEALTH.forget(HEALTH_CHECK)


@pytest.mark.slow
async def test_a_refused_sender_is_refused_without_asking_redis_until_its_next_token(redis_url: str) -> None:
    clock = Clock()
    limiter = RateLimiter("ws", Rate(per_second=2, burst=1), redis_url=redis_url, clock=clock)
    key = f"flooder-{free_port()}"
    assert (await limiter.atake(key)).allowed
    refused = await limiter.atake(key)
    assert not refused.allowed and 0 < refused.retry_after <= 0.5
    asked = []
    real = limiter._async_script

    def counting() -> object:
        asked.append(1)
        return real()

    limiter._async_script = counting  # type: ignore[method-assign]
    again = [await limiter.atake(key) for _ in range(100)] + [limiter.take(key, cost=3)]
    assert not any(d.allowed or d.granted for d in again) and asked == []
    assert again[-1].retry_after == pytest.approx(refused.retry_after)  # the clock stood still
    # Another sender still goes to Redis; and once the token is due, so does this one.
    assert (await limiter.atake(f"other-{key}")).allowed and asked == [1]
    clock.now += refused.retry_after + 0.01
    await asyncio.sleep(refused.retry_after + 0.05)  # Redis' own clock must have moved as well
    assert (await limiter.atake(key)).allowed and asked == [1, 1]
