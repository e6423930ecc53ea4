"""(7) The room page's own work per message, in a real Chromium.

A signed-in page (`/rooms/lobby/`, the shipped room.js) stays open while one
WebSocket sender posts at rising rates (the rate the server took them at is
reported too: one socket's posts are stored one by one). From the page: the main thread's time
per message (Chrome's own counters over the step: script, style, layout, all
tasks), the time inside the socket's message handler alone, whether the page
showed the last message within a few seconds of it being sent, and what the
page holds afterwards (DOM nodes, JS heap). "All tasks" includes drawing each
frame (headless Chromium paints in software, whether or not a message came),
so it falls less than the script and layout figures when the page's own work
falls.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import Load, Options, say
from benchmarks.stacks import Stack
from tests.support.http import login_cookie
from tests.support.processes import require_binary

RATES = (50, 200, 500)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
METRICS = ("ScriptDuration", "LayoutDuration", "RecalcStyleDuration", "TaskDuration")

# Times every call of the page's socket message handler (whatever room.js sets as onmessage).
TIME_HANDLER = """
(() => {
  window.__handler = { calls: 0, ms: 0 };
  const slot = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
  Object.defineProperty(WebSocket.prototype, "onmessage", {
    configurable: true,
    get() { return slot.get.call(this); },
    set(fn) {
      slot.set.call(this, function (event) {
        const started = performance.now();
        try { return fn.call(this, event); }
        finally { window.__handler.calls += 1; window.__handler.ms += performance.now() - started; }
      });
    },
  });
})();
"""


def run(opts: Options) -> list[dict[str, Any]]:
    say("page: room.js in Chromium")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        stack = Stack(Path(tmp), opts, "page")
        try:
            return _run(stack)
        finally:
            stack.stop()


def _run(stack: Stack) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    opts = stack.opts
    stack.infra()
    env = stack.bridge_env()
    address = stack.bridge_asgi(env)
    base = f"http://{address}"
    cookie = login_cookie(base, "demo", "demo")
    cookies = [{"name": k, "value": v, "url": base} for k, _, v in (c.partition("=") for c in cookie.split("; "))]
    rows = []
    seconds = opts.pick(4, 10)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_binary("chromium", "/usr/bin/chromium"),
                                             headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies(cookies)  # type: ignore[arg-type]
            page = context.new_page()
            page.add_init_script(TIME_HANDLER)
            page.goto(f"{base}/rooms/lobby/")
            page.wait_for_selector('#status[data-state="open"]')
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            sent_total = 0
            for rate in RATES:
                count = int(rate * seconds)
                tag = uuid.uuid4().hex[:8]
                before, handler_before = _metrics(cdp), page.evaluate("({...window.__handler})")
                sender = Load("ws_sender", ["--url", f"ws://{address}/ws/rooms/lobby/", "--rate", str(rate),
                                            "--count", str(count), "--tag", tag, "--bridge", "--cookie", cookie,
                                            "--origin", base], cpus=opts.load_cpus)
                sent = sender.result()
                sent_at = time.monotonic()  # every post acknowledged (stored) by now
                last = f"r={tag};n={count - 1}"
                shown = True
                try:
                    page.wait_for_function("last => { const items = document.querySelectorAll('#messages .text'); "
                                           "return items.length && items[items.length - 1].textContent.endsWith(last); }",
                                           arg=last, timeout=30_000, polling=50)
                except Exception:  # noqa: BLE001 - a page that fell behind is a figure, not a crash
                    shown = False
                caught_up_s = time.monotonic() - sent_at
                after, handler_after = _metrics(cdp), page.evaluate("({...window.__handler})")
                sent_total += count
                calls = handler_after["calls"] - handler_before["calls"]
                row: dict[str, Any] = {
                    "scenario": "page", "target": "room.js", "rate": rate, "messages": count,
                    "achieved_rate": sent["acked"] / sent["seconds"], "stored": sent["acked"],
                    "shown_last": shown, "behind_after_send_s": round(caught_up_s, 3),
                    "handler_ms_per_msg": (handler_after["ms"] - handler_before["ms"]) / max(1, calls),
                    "nodes_after": after["Nodes"], "js_heap_mib": after["JSHeapUsedSize"] / 2**20,
                    "messages_in_page": sent_total,
                }
                for metric in METRICS:
                    row[f"{metric}_ms_per_msg"] = (after[metric] - before[metric]) * 1000 / count
                say(f"  {rate}/s: {row['TaskDuration_ms_per_msg']:.3f} ms of main thread per message, "
                    f"handler {row['handler_ms_per_msg']:.3f} ms, {int(row['nodes_after'])} DOM nodes, "
                    f"last shown {caught_up_s:.2f} s after the send ended")
                rows.append(row)
        finally:
            browser.close()
    return rows


def _metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: float(m["value"]) for m in cdp.send("Performance.getMetrics")["metrics"]}
