"""What this process depends on, and whether each dependency answers now.

One registry per process (`HEALTH`). Whatever talks to a dependency (the
channel layer's Redis, the database, the MQTT broker, the XMPP server) or runs a
supervised loop reports into it with `ok()` / `failing()`; `/readyz` and the
health endpoint of every non-HTTP process read `snapshot()`. A change of state
is logged once (failing: WARNING, recovered: INFO), never once per attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

MAX_DETAIL = 300  # a reason is for a person reading /readyz, not a traceback dump


@dataclass(frozen=True)
class CheckState:
    name: str
    ok: bool
    detail: str = ""
    since: float = field(default_factory=time.time)
    # Whether a failure makes the process "not ready". Supervised loops that
    # only do housekeeping can report without failing readiness.
    critical: bool = True


class Health:
    """A thread-safe map of check name to its latest state (any thread may report)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, CheckState] = {}
        self._starting: set[str] = set()  # reported by `starting`, not yet ok or failing
        self._last_ok: dict[str, float] = {}  # name -> when it last reported ok (a loop's last run)

    def ok(self, name: str, *, critical: bool = True) -> None:
        self._last_ok[name] = time.time()
        self._set(CheckState(name=name, ok=True, critical=critical))

    def failing(self, name: str, detail: object, *, critical: bool = True) -> None:
        text = str(detail) or type(detail).__name__
        self._set(CheckState(name=name, ok=False, detail=text[:MAX_DETAIL], critical=critical))

    def starting(self, name: str, detail: str, *, critical: bool = True) -> None:
        """Not ready yet, and nothing is wrong (connecting at start): shown, not logged."""
        with self._lock:
            if name not in self._checks:
                self._checks[name] = CheckState(name, False, detail, critical=critical)
                self._starting.add(name)

    def forget(self, name: str) -> None:
        """The dependency is no longer used by this process (a stopped loop, a closed edge)."""
        with self._lock:
            self._checks.pop(name, None)
            self._starting.discard(name)
            self._last_ok.pop(name, None)

    def _set(self, state: CheckState) -> None:
        with self._lock:
            previous = self._checks.get(state.name)
            if previous is not None and previous.ok == state.ok and previous.detail == state.detail:
                return
            if previous is not None and previous.ok == state.ok:
                # Same verdict, new detail: keep when it started.
                state = CheckState(state.name, state.ok, state.detail, previous.since, state.critical)
            self._checks[state.name] = state
            was_starting = state.name in self._starting
            self._starting.discard(state.name)
        if state.ok and (previous is None or was_starting):
            return
        if state.ok:
            logger.info("%s: recovered", state.name)
        elif previous is None or previous.ok or was_starting:
            logger.warning("%s: failing: %s", state.name, state.detail)

    def snapshot(self) -> dict[str, CheckState]:
        with self._lock:
            return dict(self._checks)

    def ready(self) -> bool:
        return all(state.ok for state in self.snapshot().values() if state.critical)

    def as_json(self) -> dict[str, object]:
        """The body of /readyz and of the processes' health endpoints."""
        now = time.time()
        checks = {
            name: {
                "ok": state.ok,
                **({"detail": state.detail} if state.detail else {}),
                "for_seconds": round(now - state.since, 1),
                **(
                    {"last_ok_seconds_ago": round(now - self._last_ok[name], 1)}
                    if name in self._last_ok
                    else {}
                ),
                **({} if state.critical else {"critical": False}),
            }
            for name, state in sorted(self.snapshot().items())
        }
        return {"status": "ok" if self.ready() else "unavailable", "checks": checks}


HEALTH = Health()
