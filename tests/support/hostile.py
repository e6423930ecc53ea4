"""Hostile input for property-based tests: text and JSON that broke a backend before."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Characters hypothesis rarely draws on its own, each of which broke a backend or a protocol.
NASTY_CHARS = ["\x00", "\ud800", "\udfff", "\ufffe", "\uffff", "\x01", "\x1f", "\u2028", "é", "😀"]
NASTY_INTS = [2**63 - 1, 2**63, 2**64, 2**64 - 1, -(2**63), -(2**63) - 1, 10**30]

texts = st.text(st.one_of(st.characters(), st.sampled_from(NASTY_CHARS)), max_size=20)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(NASTY_INTS), st.floats(), texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=25,
)
# A message as an edge receives it: mostly the right shape, with hostile values inside.
message_bodies = st.fixed_dictionaries(
    {"text": st.one_of(texts, scalars)},
    optional={"client_id": st.one_of(texts, scalars), "data": st.one_of(json_values, st.dictionaries(texts, json_values, max_size=3))},
)


def encoded(value: Any, ascii_only: bool) -> str:
    """JSON text as a client might send it (ascii_only escapes lone surrogates as \\udXXX)."""
    return json.dumps(value, ensure_ascii=ascii_only)
