"""Latency samples to the figures and chart data a load generator prints."""

from __future__ import annotations

import random
import re
from array import array
from typing import Any

STAMP = re.compile(rb"t=([0-9]+\.[0-9]+);")
SAMPLE = 5000


def stamp_text(now: float, tag: str, n: int) -> str:
    """The text every generator sends: when it was sent (the monotonic clock is system-wide)."""
    return f"t={now:.6f};r={tag};n={n}"


def percentiles(latencies: array) -> dict[str, float | None]:
    """p50 and p99 in ms of latencies in seconds."""
    ordered = sorted(latencies)
    count = len(ordered)
    if not count:
        return {"p50_ms": None, "p99_ms": None}
    return {f"p{p}_ms": round(ordered[min(count - 1, int(count * p / 100))] * 1e3, 3) for p in (50, 99)}


def summary(latencies: array, *, first: float | None, last: float | None) -> dict[str, Any]:
    ordered = sorted(latencies)
    count = len(ordered)

    def pct(p: float) -> float | None:
        return round(ordered[min(count - 1, int(count * p))] * 1e3, 3) if count else None

    span = (last - first) if first is not None and last is not None and last > first else None
    return {
        "deliveries": count,
        "span_s": span,
        "per_s": round(count / span, 1) if span else None,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "sample_ms": [round(x * 1e3, 3) for x in random.sample(ordered, min(SAMPLE, count))],
    }
