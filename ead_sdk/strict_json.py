"""Strict JSON reading: duplicate keys and absurd nesting are refused instead of silently resolved.

``json.loads`` keeps the last of two equal keys (``{"window": 2, "window": 9}`` reads as 9) and
raises ``RecursionError`` on deep nesting; both are errors a user should see named.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 100
"""The deepest nesting of objects and lists accepted (specs and trace fields are shallow)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses an object with a key given twice (ValueError naming it)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in one JSON object")
        out[key] = value
    return out


def _depth(text: str) -> int:
    """The deepest bracket nesting of JSON ``text`` (brackets inside strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(text: str | bytes) -> Any:
    """``json.loads`` that raises ``ValueError`` on a duplicate key or nesting deeper than `MAX_DEPTH`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None


def loads_object(text: str | bytes) -> dict[str, Any]:
    """`loads` for text that must hold one JSON object; ``ValueError`` says what it held instead."""
    try:
        value = loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    return value
