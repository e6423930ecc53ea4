"""JSON from the outside world: one place that turns every decoding failure into our error."""

from __future__ import annotations

import json
from typing import Any

from bridge.exceptions import InvalidInput


def loads(text: str | bytes, *, what: str = "The payload") -> Any:
    """Decode, or raise InvalidInput(code="invalid_json").

    Deeply nested input raises RecursionError, not ValueError, inside the json
    module: it is bad input like any other, never a crash.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput(f"{what} is not valid JSON: {reason}", code="invalid_json") from exc
