"""How paho's thread hands work to the loop: in order, one wake-up per burst, nothing left behind."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from protocols.mqtt.server import _Handoff


class CountingLoop:
    """A new event loop whose `call_soon_threadsafe` calls are counted (the wake-ups)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.wakeups = 0
        real = self.loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.wakeups += 1
            return real(*args, **kwargs)

        self.loop.call_soon_threadsafe = counted  # type: ignore[method-assign]

    def run_pending(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))


@pytest.fixture
def counting() -> Iterator[CountingLoop]:
    loop = CountingLoop()
    yield loop
    loop.loop.close()


def from_thread(target: Any) -> None:
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()


def test_a_burst_from_another_thread_runs_in_order_after_one_wakeup(counting: CountingLoop) -> None:
    handoff = _Handoff(counting.loop)
    seen: list[int] = []
    from_thread(lambda: [handoff.call(seen.append, n) for n in range(1000)])

    assert seen == []  # nothing runs in paho's thread
    assert counting.wakeups == 1
    counting.run_pending()
    assert seen == list(range(1000))


def test_a_call_after_a_drain_wakes_the_loop_again(counting: CountingLoop) -> None:
    handoff = _Handoff(counting.loop)
    seen: list[str] = []
    from_thread(lambda: handoff.call(seen.append, "first"))
    counting.run_pending()
    from_thread(lambda: handoff.call(seen.append, "second"))
    counting.run_pending()

    assert seen == ["first", "second"]
    assert counting.wakeups == 2


def test_calls_made_while_draining_run_in_the_same_drain(counting: CountingLoop) -> None:
    handoff = _Handoff(counting.loop)
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        handoff.call(seen.append, "during")  # as if paho's thread appended meanwhile

    from_thread(lambda: handoff.call(first))
    counting.run_pending()

    assert seen == ["first", "during"]


def test_a_call_that_raises_leaves_the_calls_behind_it_to_the_next_drain(counting: CountingLoop) -> None:
    handoff = _Handoff(counting.loop)
    seen: list[str] = []
    errors: list[Any] = []
    counting.loop.set_exception_handler(lambda loop, context: errors.append(context["exception"]))

    def broken() -> None:
        raise RuntimeError("boom")

    from_thread(lambda: (handoff.call(broken), handoff.call(seen.append, "after")))
    counting.run_pending()
    counting.run_pending()

    assert [str(e) for e in errors] == ["boom"]
    assert seen == ["after"]
