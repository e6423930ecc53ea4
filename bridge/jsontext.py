"""Text and JSON from the outside world: the one validation every edge uses.

Whatever an edge decodes (an HTTP body or query, a WebSocket frame, an MQTT
payload, an XMPP body) passes through here before anything is stored, so what
SQLite accepts PostgreSQL accepts too, and what is stored can always be fanned
out. Every refusal is `InvalidInput` (or `TooLarge`), which each edge turns into
its own error: a JSON error, an `error` frame, a message on
`devices/<device>/errors`, an XMPP error.

The rules, and why:
- JSON is UTF-8 (RFC 8259), nested at most `MAX_DEPTH` deep (deeper input
  overflowed Python's and msgpack's recursion limits further down), with
  finite numbers only (PostgreSQL's jsonb has no NaN or Infinity) and
  integers within signed 64 bits (the channel layer's msgpack carries no more;
  a larger one was stored and then never fanned out).
- No string and no key holds U+0000 or a lone surrogate: PostgreSQL refuses
  the first, and the second cannot be written as UTF-8 at all. Keys are at
  most `MAX_KEY` characters.
- Message text (and idempotency keys) hold only characters XML 1.0 can carry,
  so every message stays deliverable to XMPP.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from bridge.exceptions import InvalidInput, TooLarge

MAX_DEPTH = 32
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_KEY = 256

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Characters XML 1.0 cannot carry (controls, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def decode_utf8(raw: bytes, *, what: str = "The payload") -> str:
    """Bytes to text, or InvalidInput(code="invalid_utf8")."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8: {exc}", code="invalid_utf8") from exc


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: str | bytes, *, what: str = "The payload") -> Any:
    """Decode and check (see the module's rules), or raise InvalidInput(code="invalid_json").

    Deeply nested input raises RecursionError, not ValueError, inside the json
    module: it is bad input like any other, never a crash.
    """
    text = decode_utf8(raw, what=what) if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput(f"{what} is not valid JSON: {reason}", code="invalid_json") from exc
    check_json(value, what=what)
    return value


def check_json(value: Any, *, what: str, code: str = "invalid_json") -> None:
    """Refuse a decoded JSON value that breaks a rule; the detail says where ($.a[2].b).

    Iterative, so a value nested deeper than the interpreter's stack is refused
    here rather than crashing the caller.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "$")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            _check_string(item, what=what, code=code, where=path)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise InvalidInput(
                    f"{what} has an integer at {path} outside the signed 64-bit range "
                    "(send larger numbers as strings).", code=code,
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{what} has a number at {path} that is not finite.", code=code)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidInput(
                    f"{what} is nested deeper than {MAX_DEPTH} levels (at {path}).", code=code
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise InvalidInput(f"{what} has a key at {path} that is not a string.", code=code)
                    if len(key) > MAX_KEY:
                        raise InvalidInput(
                            f"{what} has a key at {path} longer than {MAX_KEY} characters.", code=code
                        )
                    _check_string(key, what=what, code=code, where=f"a key of {path}")
                    stack.append((child, depth + 1, f"{path}.{key[:40]}"))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        else:
            raise InvalidInput(f"{what} holds a {type(item).__name__} at {path}, not JSON.", code=code)


def _check_string(value: str, *, what: str, code: str, where: str) -> None:
    found = _UNSTORABLE.search(value)
    if found is not None:
        raise InvalidInput(
            f"{what} has {_describe(found.group())} in {where}, which cannot be stored.", code=code
        )


def check_text(value: object, *, what: str, code: str, max_chars: int | None = None) -> str:
    """A string of XML 1.0 characters of at most `max_chars`, or the error with `code`.

    The check of message text on every edge (the XMPP edge calls it for bodies
    too) and of idempotency keys.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string.", code=code)
    if max_chars is not None and len(value) > max_chars:
        raise TooLarge(f"{what} is longer than {max_chars} characters.")
    found = _NOT_XML.search(value)
    if found is not None:
        raise InvalidInput(f"{what} contains {_describe(found.group())}.", code=code)
    return value


def whole_number(raw: str, *, what: str, code: str, minimum: int | None = None) -> int:
    """A query parameter as a signed 64-bit integer (what every database column takes)."""
    try:
        number = int(raw)
    except ValueError as exc:
        raise InvalidInput(f"{what} must be a whole number.", code=code) from exc
    if not INT_MIN <= number <= INT_MAX:
        raise InvalidInput(f"{what} is outside the signed 64-bit range.", code=code)
    if minimum is not None and number < minimum:
        raise InvalidInput(f"{what} must be at least {minimum}.", code=code)
    return number


def _describe(char: str) -> str:
    if char == "\x00":
        return "U+0000 (NUL)"
    if "\ud800" <= char <= "\udfff":
        return f"a lone surrogate U+{ord(char):04X}"
    return f"the control character U+{ord(char):04X}"
