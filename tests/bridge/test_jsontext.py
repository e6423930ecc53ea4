"""Property-based tests of the one validation of outside text and JSON (bridge/jsontext.py)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import jsontext
from bridge.exceptions import InvalidInput
from tests.support.hostile import json_values, texts


def strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_of(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_of(v)]
    return []


def assert_storable_everywhere(value: Any) -> None:
    """What PostgreSQL's jsonb, SQLite's text and the channel layer's msgpack all carry."""
    json.dumps(value, allow_nan=False).encode("utf-8")  # no lone surrogate, no NaN
    msgpack.packb(value)  # integers in range, depth within msgpack's limit
    assert not any("\x00" in s for s in strings_of(value))


@given(json_values, st.booleans())
def test_loads_returns_a_storable_value_or_refuses_with_invalid_json(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only)
    try:
        decoded = jsontext.loads(raw, what="The body")
    except InvalidInput as exc:
        assert exc.code == "invalid_json" and exc.detail.startswith("The body")
        return
    assert_storable_everywhere(decoded)
    assert decoded == value


@given(st.binary(max_size=200))
def test_loads_of_any_bytes_refuses_only_with_our_error(raw: bytes) -> None:
    try:
        assert_storable_everywhere(jsontext.loads(raw))
    except InvalidInput as exc:
        assert exc.code in {"invalid_json", "invalid_utf8"}


@given(st.integers(min_value=0, max_value=3000), st.sampled_from(["[", '{"a":']))
def test_any_nesting_depth_is_decoded_or_refused_never_a_crash(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    raw = opener * depth + "1" + closer * depth
    try:
        jsontext.loads(raw)
    except InvalidInput as exc:
        assert depth > jsontext.MAX_DEPTH and exc.code == "invalid_json"
    else:
        assert depth <= jsontext.MAX_DEPTH


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('{"data": {"x": "a\\u0000b"}}', "U+0000"),
        ('{"a\\u0000": 1}', "U+0000"),
        ('{"data": "\\ud800"}', "surrogate"),
        ('{"data": {"n": 18446744073709551616}}', "64-bit"),
        ('{"n": -9223372036854775809}', "64-bit"),
        ('{"n": NaN}', "not valid JSON"),
        ('{"n": 1e400}', "not finite"),
        ('{"' + "k" * 300 + '": 1}', "longer than"),
    ],
)
def test_each_rule_names_what_broke_it(raw: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        jsontext.loads(raw, what="The frame")
    assert needle in refused.value.detail and refused.value.code == "invalid_json"


def test_the_edges_of_the_integer_range_are_kept() -> None:
    assert jsontext.loads(f"[{2**63 - 1}, {-(2**63)}]") == [2**63 - 1, -(2**63)]


@given(texts, st.integers(min_value=1, max_value=30))
def test_check_text_keeps_only_what_xml_and_every_database_carry(text: str, limit: int) -> None:
    """The check message bodies get on every edge, XMPP's included."""
    try:
        kept = jsontext.check_text(text, what="The body", code="invalid_text", max_chars=limit)
    except InvalidInput as exc:
        assert exc.code in {"invalid_text", "too_large"}
        return
    assert kept == text and len(text) <= limit
    text.encode("utf-8")
    assert not any(ord(c) < 0x20 and c not in "\t\n\r" for c in text)
    assert "\ufffe" not in text and "\uffff" not in text


@given(st.text(max_size=30) | st.integers().map(str))
def test_whole_number_is_a_64_bit_integer_or_refused(raw: str) -> None:
    try:
        number = jsontext.whole_number(raw, what="'after'", code="invalid_after", minimum=0)
    except InvalidInput as exc:
        assert exc.code == "invalid_after"
        return
    assert 0 <= number <= jsontext.INT_MAX
