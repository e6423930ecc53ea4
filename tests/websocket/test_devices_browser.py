"""The room page with devices, in a real browser, against `runbridge` and `simulate_devices`.

Screenshots go to var/screenshots/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mqtt_device import TestDevice
from tests.support.processes import (
    REPO,
    Proc,
    free_port,
    manage,
    start_manage,
    wait_for_port,
    wait_until,
)
from tests.support.stack import provision
from tests.websocket.test_browser import browser, texts  # noqa: F401 - the browser fixture

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SHOTS = REPO / "var" / "screenshots"
ARCHIVE = 2000

SEED = f"""
from bridge.models import Room
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import NewMessage, message_store_many
old = identity_get_or_create(kind="user", name="historian")
room = Room.objects.get(slug="archive")
message_store_many(room=room, messages=[
    NewMessage(sender=old, origin="api", text=f"archived {{i}}") for i in range(1, {ARCHIVE} + 1)
])
"""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """runbridge (embedded broker) with lobby and a 2,000-message archive; the simulator on it."""
    stack = provision(tmp_path, rooms=("lobby", "archive"), TELEMETRY_SWEEP_INTERVAL="1")
    manage(["shell", "-c", SEED], env=stack.env)
    port, mqtt_port = free_port(), free_port()
    procs: list[Proc] = []
    try:
        bridge = start_manage("runbridge", ["runbridge", f"127.0.0.1:{port}", "--mqtt-port", str(mqtt_port)],
                              env=stack.env, log_dir=tmp_path)
        procs.append(bridge)
        wait_for_port(port, proc=bridge, timeout=30)
        wait_until(lambda: "Bridge is running" in bridge.output(), what="runbridge ready", proc=bridge)
        procs.append(start_manage(
            "simulator",
            ["simulate_devices", "--url", f"mqtt://127.0.0.1:{mqtt_port}", "--devices", "3", "--rate", "2",
             "--excursion-every", "20", "--excursion-for", "8", "--duration", "240", "--seed", "3"],
            env=stack.env, log_dir=tmp_path,
        ))
        yield f"http://127.0.0.1:{port}", mqtt_port
    finally:
        for proc in reversed(procs):
            proc.stop()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(browser: Any, base: str, room: str) -> Any:  # noqa: F811 - the fixture's value
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(f"{base}/accounts/login/?next=/rooms/{room}/")
    page.fill("#id_username", "demo")
    page.fill("#id_password", "demo")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector('#status[data-state="open"]')
    return page


def test_devices_panel_live_readings_chart_alert_and_a_command(
    running: tuple[str, int], browser: Any  # noqa: F811
) -> None:
    base, mqtt_port = running
    page = sign_in(browser, base, "lobby")
    # The page may come before the simulator's devices: they appear without a reload.
    page.wait_for_selector('#device-list li.device[data-device="sim-0"]', timeout=30000)
    online = page.locator('li.device[data-device="sim-0"][data-status="online"]')
    online.wait_for(timeout=30000)

    value = page.locator('li.device[data-device="sim-0"] .value').last  # temperature
    value.wait_for(timeout=30000)
    first = value.text_content()
    page.wait_for_function(
        "([el, old]) => el.textContent !== old", arg=[value.element_handle(), first], timeout=30000
    )
    assert value.text_content() != first and "°C" in (value.text_content() or "")

    page.locator('li.device[data-device="sim-0"] button.metric', has_text="temperature").click()
    page.wait_for_selector("#chart circle.point", timeout=30000)
    assert page.locator("#chart polyline.line").count() == 1
    # Updated live: new readings redraw the chart (its elements are replaced).
    page.evaluate("window.drawnBefore = document.querySelector('#chart').firstChild")
    page.wait_for_function("document.querySelector('#chart').firstChild !== window.drawnBefore",
                           timeout=30000)
    assert page.locator("#chart circle.point").count() >= 1
    page.wait_for_selector("#chart circle.live")  # readings as they arrive, between rollups
    shot(page, "room-devices")

    page.locator("#messages .text", has_text=re.compile(r"^ALERT sim-\d temperature")).first.wait_for(timeout=60000)
    assert page.locator("#messages li.origin-system").count() >= 1
    shot(page, "room-alert")
    page.locator("#messages .text", has_text=re.compile(r"^CLEARED sim-\d temperature")).first.wait_for(timeout=60000)

    watcher = TestDevice(mqtt_port, "watcher", "any")
    try:
        watcher.subscribe("devices/sim-0/commands")
        page.locator('li.device[data-device="sim-0"] button.metric', has_text="temperature").click()
        page.fill("#command-text", "blink twice")
        page.get_by_role("button", name="Send command").click()
        page.locator("#command-status", has_text="sent to sim-0").wait_for(timeout=15000)
        command = watcher.expect("devices/sim-0/commands", timeout=20)
    finally:
        watcher.close()
    assert b'"blink twice"' in command
    page.locator("#answers li", has_text="sim-0: done: blink twice").wait_for(timeout=20000)
    shot(page, "room-command")


def test_scrolling_up_reads_a_room_back_to_its_first_message(
    running: tuple[str, int], browser: Any  # noqa: F811
) -> None:
    base, _ = running
    page = sign_in(browser, base, "archive")
    page.wait_for_selector("#messages li")
    assert page.locator("#messages li").count() == 50
    for _ in range(100):
        if page.locator("#older", has_text="the beginning of the room").count():
            break
        shown = page.locator("#messages li").count()
        page.evaluate("document.getElementById('messages').scrollTop = 0")
        page.wait_for_function(
            f"document.querySelectorAll('#messages li').length > {shown}"
            " || document.getElementById('older').textContent.includes('beginning')",
            timeout=15000,
        )
    seqs = [int(s) for s in page.locator("#messages li").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == list(range(1, ARCHIVE + 1))
    assert texts(page)[0] == "archived 1"
    page.evaluate("document.getElementById('messages').scrollTop = 0")
    shot(page, "room-history-top")
