"""Living with a channel layer that fails: bounded calls, receive loops that outlive outages."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge import layer
from bridge.health import HEALTH, Health
from bridge.layer import LayerMember


class FrozenCall:
    """An awaitable that never finishes, as a call to a SIGSTOPped Redis."""

    def __await__(self) -> Any:
        return asyncio.Event().wait().__await__()


async def test_a_call_to_a_frozen_layer_gives_up_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer, "LAYER_TIMEOUT", 0.05)
    assert await layer.layer_call(FrozenCall(), "group_send") is False
    assert not HEALTH.snapshot()["channel_layer"].ok
    # Right after a failure, without a watch, the next sends skip the layer at once.
    assert layer.layer_down()
    HEALTH.forget("channel_layer")


async def test_a_members_receive_loop_outlives_failures() -> None:
    outcomes: list[Any] = [RedisConnectionError("gone"), TimeoutError(), {"type": "room.message"}]

    async def flaky_receive() -> dict[str, Any]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    class Member(LayerMember):
        pass

    member = Member()
    member.channel_receive = flaky_receive  # as AsyncConsumer.__call__ assigns it
    message = await asyncio.wait_for(member.channel_receive(), 5)
    assert message == {"type": "room.message"} and outcomes == []
    HEALTH.forget("channel_layer")


def test_starting_is_shown_not_ready_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    health = Health()
    with caplog.at_level(logging.INFO, logger="bridge.health"):
        health.starting("broker", "connecting")
        assert not health.ready() and health.as_json()["checks"]["broker"]["detail"] == "connecting"
        health.ok("broker")
        assert health.ready()
    assert caplog.records == []  # neither "failing" nor "recovered": nothing went wrong
    with caplog.at_level(logging.INFO, logger="bridge.health"):
        health.starting("xmpp", "connecting")
        health.failing("xmpp", "refused")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
