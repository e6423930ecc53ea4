"""MQTT client id slots leased in a real Redis: distinct, stable per replica, never shared."""

from __future__ import annotations

import asyncio

import pytest

from protocols.mqtt.slots import ClientIdSlot, SlotLost

pytestmark = pytest.mark.slow


async def test_replicas_get_distinct_slots_and_a_restarted_one_takes_its_own_back(redis_url: str) -> None:
    template = f"bridge-{id(object())}-{{slot}}"
    first = ClientIdSlot(redis_url, template, owner="container-a")
    second = ClientIdSlot(redis_url, template, owner="container-b")
    assert await first.claim() == template.replace("{slot}", "1")
    assert await second.claim() == template.replace("{slot}", "2")
    # container-a crashed (no release) and came back with the same HOSTNAME: slot 1 at once.
    again = ClientIdSlot(redis_url, template, owner="container-a")
    assert await again.claim() == template.replace("{slot}", "1")
    # The crashed incarnation, were it still alive, finds its lease gone and must stop.
    first.ttl_ms = 300  # renew every 0.1 s
    with pytest.raises(SlotLost):
        await asyncio.wait_for(first.keep(), 5)
    await second.release()
    third = ClientIdSlot(redis_url, template, owner="container-c")
    assert await third.claim() == template.replace("{slot}", "2")  # released: the lowest free
    for slot in (first, again, third):
        await slot.release()


def test_a_template_needs_the_placeholder(redis_url: str) -> None:
    with pytest.raises(ValueError, match="slot"):
        ClientIdSlot(redis_url, "bridge-1")
