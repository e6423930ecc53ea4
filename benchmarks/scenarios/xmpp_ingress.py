"""(5) XMPP ingress: occupants send into a room; messages per second stored and fanned out.

Occupants are slixmpp clients (STARTTLS) in load-generator processes of their
own, one account each, on a real Prosody (the shipped config, its per-client
bandwidth raised: see stacks.BENCH_C2S_RATE). Each burst sends every message
as fast as the streams take them; the rate is what arrives at the far side,
first to last arrival.

Targets: the bridge's `runxmpp` (stores each message, then fans it out: a few
WebSocket listeners on uvicorn, Redis channel layer, SQLite), and the anchor,
a bare slixmpp echo component on the same Prosody that sends each message on
to one XMPP client (benchmarks/peers/xmpp_echo.py).
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import Load, Options, Profile, median_row, say
from benchmarks.stacks import Stack

SENDERS = 4  # occupants, one per process
LISTENERS = 5  # the bridge's WebSocket audience
KEYS = ("rate", "delivered", "p50_ms", "p99_ms")


def run(opts: Options) -> list[dict[str, Any]]:
    rows = []
    for target in ("bridge", "slixmpp-echo"):
        if not opts.wants(target):
            continue
        say(f"xmpp ingress: {target}")
        with tempfile.TemporaryDirectory(prefix=f"bench-xmpp-{target}-") as tmp:
            stack = Stack(Path(tmp), opts, f"xmpp_ingress-{target}")
            try:
                rows.append({"scenario": "xmpp_ingress", "target": target, "senders": SENDERS,
                             **_target(stack, target)})
            finally:
                stack.stop()
    return rows


def _target(stack: Stack, target: str) -> dict[str, Any]:
    opts = stack.opts
    stack.infra(occupants=SENDERS + 1)
    assert stack.xmpp is not None
    if target == "bridge":
        env = stack.bridge_env()
        address = stack.bridge_asgi(env)
        profiled = stack.bridge_runxmpp(env)
        audience = Load("ws_listeners", [
            "--url", f"ws://{address}/ws/rooms/lobby/", "--origin", f"http://{address}", "--bridge",
            "--clients", str(LISTENERS), "--idle", "15"], cpus=opts.load_cpus)
    else:
        listener = f"occ-{SENDERS}"
        profiled = stack.peer_xmpp_echo(to=f"{listener}@{stack.xmpp.domain}/bench")
        audience = Load("xmpp_occupants", ["listen", *stack.occupant_args(SENDERS, 1), "--idle", "15"],
                        cpus=opts.load_cpus)
    audience.read()
    clients = LISTENERS if target == "bridge" else 1
    senders = [Load("xmpp_occupants", ["send", *stack.occupant_args(n, 1)], cpus=opts.load_cpus)
               for n in range(SENDERS)]
    try:
        for sender in senders:
            sender.read()
        # Warm-up: each occupant's identity made (bridge), every stream past its first messages.
        _one_run(audience, senders, clients, count=SENDERS * 10, tag=f"warm-{uuid.uuid4().hex[:6]}")
        burst = opts.pick(2000, 6000)
        runs = []
        for n in range(opts.runs):
            with Profile(opts, profiled.popen.pid if n == 0 else 0, f"xmpp_ingress-{target}"):
                got = _one_run(audience, senders, clients, count=burst, tag=f"b{n}-{uuid.uuid4().hex[:6]}")
            say(f"  burst {n + 1}/{opts.runs}: {got['rate']} msg/s ({got['delivered']}/{burst} delivered), "
                f"p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms")
            runs.append(got)
    finally:
        for load in (*senders, audience):
            load.close()
    return {**median_row(runs, KEYS), "burst": burst}


def _one_run(audience: Load, senders: list[Load], clients: int, *, count: int, tag: str) -> dict[str, Any]:
    """`count` messages from the senders between them; the audience's (`clients`) view of them."""
    each = count // len(senders)
    audience.tell(f"{tag} {each * len(senders)}")
    for sender in senders:
        sender.tell(f"{tag} {each} 0")
    for sender in senders:
        sender.read()
    seen = audience.read()
    delivered = seen["deliveries"] // clients
    span = seen.get("span_s") or 0
    return {
        "rate": round(delivered / span, 1) if span else None, "delivered": delivered,
        "p50_ms": seen["p50_ms"], "p99_ms": seen["p99_ms"], "sample_ms": seen["sample_ms"],
    }
