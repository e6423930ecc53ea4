"""A real browser (Debian's chromium through Playwright) against `runbridge`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import free_port, manage, require_binary, start_manage, wait_for_port
from tests.support.stack import provision

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[str]:
    stack = provision(tmp_path)
    manage(["demo", "--username", "bob", "--password", "bob"], env=stack.env)
    port = free_port()
    proc = start_manage("runbridge", ["runbridge", f"127.0.0.1:{port}", "--mqtt-port", str(free_port())], env=stack.env, log_dir=tmp_path)
    try:
        wait_for_port(port, proc=proc, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = require_binary("chromium", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def signed_in_page(browser: Any, base: str, user: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(f"{base}/")
    page.get_by_role("link", name="Log in").click()
    page.fill("#id_username", user)
    page.fill("#id_password", user)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="lobby").click()
    page.wait_for_selector('#status[data-state="open"]')
    return page


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page: Any) -> list[str]:
    return list(page.locator("#messages .text").all_text_contents())


def wait_for_text(page: Any, text: str) -> None:
    page.locator("#messages .text", has_text=re.compile(f"^{re.escape(text)}$")).first.wait_for(timeout=15000)


def test_two_pages_chat_live_and_a_cut_off_page_catches_up(bridge: str, browser: Any) -> None:
    alice = signed_in_page(browser, bridge, "demo")
    bob = signed_in_page(browser, bridge, "bob")

    say(alice, "hello from alice <script>window.pwned=1</script>")
    wait_for_text(bob, "hello from alice <script>window.pwned=1</script>")
    assert bob.evaluate("window.pwned") is None  # shown as text, never run
    say(bob, "hi alice")
    wait_for_text(alice, "hi alice")
    assert bob.locator("#presence li", has_text="demo").count() == 1

    # Cut bob's WebSocket and refuse reconnects while alice keeps talking.
    state = {"offline": False, "sockets": []}

    def route(ws: Any) -> None:
        if state["offline"]:
            ws.close(code=1001, reason="cut off by the test")
            return
        ws.connect_to_server()
        state["sockets"].append(ws)

    bob.route_web_socket(re.compile(r".*/ws/rooms/.*"), route)
    bob.reload()
    bob.wait_for_selector('#status[data-state="open"]')
    assert texts(bob)[-2:] == ["hello from alice <script>window.pwned=1</script>", "hi alice"]

    state["offline"] = True
    for ws in state["sockets"]:
        ws.close(code=1001, reason="cut off by the test")
    bob.wait_for_selector('#status[data-state="closed"]')
    missed = [f"while you were away {i}" for i in range(5)]
    for text in missed:
        say(alice, text)
    wait_for_text(alice, missed[-1])
    assert not any(t.startswith("while you were away") for t in texts(bob))

    state["offline"] = False
    wait_for_text(bob, missed[-1])
    shown = texts(bob)
    assert shown[-5:] == missed
    assert len(shown) == len(set(shown))  # nothing twice
    seqs = [int(s) for s in bob.locator("#messages li").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no hole

    # A reload shows the history from the database.
    alice.reload()
    wait_for_text(alice, missed[-1])
    assert texts(alice)[-5:] == missed


def drop_frames_with_text(page: Any, text: str) -> list[int]:
    """Route the page's WebSocket through the test, dropping message frames with `text`
    (as if the channel layer lost them); returns the seqs dropped so far."""
    dropped: list[int] = []

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "message" and frame["message"]["text"] == text:
                dropped.append(frame["message"]["seq"])
                return
            ws.send(message)

        server.on_message(from_server)
        ws.on_message(lambda message: server.send(message))

    page.route_web_socket(re.compile(r".*/ws/rooms/.*"), route)
    return dropped


def open_lobby(page: Any, base: str) -> None:
    page.goto(f"{base}/accounts/login/?next=/rooms/lobby/")
    page.fill("#id_username", "demo")
    page.fill("#id_password", "demo")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector('#status[data-state="open"]')


def test_a_message_lost_on_the_way_is_fetched_from_history(bridge: str, browser: Any) -> None:
    page = browser.new_context().new_page()
    dropped = drop_frames_with_text(page, "lost on the way")
    open_lobby(page, bridge)
    for text in ("before", "lost on the way", "after"):
        say(page, text)
    wait_for_text(page, "after")
    assert dropped, "the route never saw the message it should drop"
    assert texts(page)[-3:] == ["before", "lost on the way", "after"]


def test_a_hole_left_by_a_deleted_message_does_not_stall_the_page(bridge: str, browser: Any, tmp_path: Path) -> None:
    import sqlite3

    page = browser.new_context().new_page()
    dropped = drop_frames_with_text(page, "deleted soon")
    open_lobby(page, bridge)
    say(page, "before")
    wait_for_text(page, "before")
    say(page, "deleted soon")
    for _ in range(100):
        if dropped:
            break
        page.wait_for_timeout(50)
    with sqlite3.connect(tmp_path / "bridge.sqlite3") as db:  # an admin deletes it
        db.execute("DELETE FROM bridge_message WHERE seq = ?", (dropped[0],))
    say(page, "after")
    wait_for_text(page, "after")
    assert texts(page)[-2:] == ["before", "after"]


def test_a_busy_room_keeps_the_newest_500_on_the_page_and_scrolling_up_brings_back_the_rest(
    bridge: str, browser: Any
) -> None:
    page = browser.new_context().new_page()
    open_lobby(page, bridge)
    # 650 posts through a second socket of the same user, each acknowledged (stored).
    page.evaluate("""async (count) => {
        const ws = new WebSocket(location.origin.replace("http", "ws") + "/ws/rooms/lobby/");
        await new Promise((resolve) => { ws.onopen = resolve; });
        let acked = 0;
        const done = new Promise((resolve) => {
            ws.onmessage = (event) => { if (JSON.parse(event.data).type === "ack" && ++acked === count) resolve(); };
        });
        for (let i = 0; i < count; i++) ws.send(JSON.stringify({type: "message", text: "bulk " + i}));
        await done;
        ws.close();
    }""", 650)
    wait_for_text(page, "bulk 649")
    seqs = [int(s) for s in page.locator("#messages li").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert len(seqs) == 500 and seqs == list(range(seqs[0], seqs[0] + 500))  # the newest, no hole
    assert texts(page)[-1] == "bulk 649"
    # Scrolled to the top: the page before the oldest shown comes back from the API.
    page.evaluate("document.getElementById('messages').scrollTop = 0")
    page.wait_for_function("first => Number(document.querySelector('#messages li').dataset.seq) < first",
                           arg=seqs[0], timeout=15000)
    more = [int(s) for s in page.locator("#messages li").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert more[-500:] == seqs and more == list(range(more[0], seqs[-1] + 1))
