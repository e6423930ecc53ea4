"""The rule that turns a telemetry object into numeric metrics (documented in the README).

- Nested objects are flattened with dots: `{"env": {"temp": 21.5}}` is metric `env.temp`.
- Numbers (int or float, finite, |x| <= 1e15) are metrics. Booleans, strings, null
  and arrays are ignored (arrays are not indexed: a list has no stable meaning as
  a series name).
- Top-level `id` is the reading's idempotency key and `units` an object of
  metric -> unit (`{"units": {"env.temp": "°C"}}`); neither is a metric.
- Refused with `invalid_telemetry`: not an object, no numeric metric at all, a
  number out of range, a metric name over 200 characters; `too_deep`: objects
  nested more than 8 levels; `too_large`: more than 200 metrics.
"""

from __future__ import annotations

import math
from typing import Any

from bridge.exceptions import InvalidInput, TooLarge

MAX_DEPTH = 8
MAX_METRICS = 200
MAX_METRIC_NAME = 200
MAX_UNIT = 16
MAX_ABS = 1e15
RESERVED = ("id", "units")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number):
        return None  # NaN and Infinity, which Python's json accepts
    if abs(number) > MAX_ABS:
        raise InvalidInput(
            f"A reading of {value!r} is out of range (at most {MAX_ABS:g} either way).",
            code="invalid_telemetry",
        )
    return number


def flatten(data: object) -> dict[str, float]:
    """The numeric metrics of one reading, by flattened path; raises InvalidInput."""
    if not isinstance(data, dict):
        raise InvalidInput("Telemetry is a JSON object of readings.", code="invalid_telemetry")
    metrics: dict[str, float] = {}
    stack: list[tuple[str, dict[str, Any], int]] = [
        ("", {k: v for k, v in data.items() if k not in RESERVED}, 1)
    ]
    while stack:
        prefix, node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(
                f"Telemetry objects nest at most {MAX_DEPTH} levels.", code="too_deep"
            )
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((path + ".", value, depth + 1))
                continue
            number = _number(value)
            if number is None:
                continue
            if len(path) > MAX_METRIC_NAME:
                raise InvalidInput(
                    f"Metric names are at most {MAX_METRIC_NAME} characters.",
                    code="invalid_telemetry",
                )
            metrics[path] = number
            if len(metrics) > MAX_METRICS:
                raise TooLarge(f"A reading carries at most {MAX_METRICS} metrics.")
    if not metrics:
        raise InvalidInput(
            "No numeric reading: values must be numbers (nested objects become a.b "
            "paths; strings, booleans and arrays are ignored).",
            code="invalid_telemetry",
        )
    return metrics


def units_of(data: dict[str, Any], metrics: dict[str, float]) -> dict[str, str]:
    """The `units` object's entries for metrics of this reading (others are ignored)."""
    units = data.get("units")
    if not isinstance(units, dict):
        return {}
    return {
        name: unit[:MAX_UNIT]
        for name, unit in units.items()
        if name in metrics and isinstance(unit, str)
    }
