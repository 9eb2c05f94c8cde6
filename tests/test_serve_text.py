"""Streaming text for ead serve: deltas are final, join to the whole decode, and end before a stop string."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("transformers")

from ead_sdk.demo.tokenizer import build_tokenizer  # noqa: E402
from ead_sdk.serve.text import IncrementalText  # noqa: E402

TOK = build_tokenizer()  # one id per UTF-8 byte: a character may take up to four tokens


def _stream(ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalText]:
    text = IncrementalText(TOK, [104, 105], stop)
    deltas = []
    for t in ids:
        deltas.append(text.push(t))
        if text.stopped:
            break
    deltas.append(text.finish())
    return deltas, text


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_deltas_join_to_the_decoded_text_and_never_hold_half_a_character(s):
    ids = list(s.encode("utf-8"))
    deltas, text = _stream(ids)
    assert "".join(deltas) == s == text.text
    assert all("\ufffd" not in d for d in deltas)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab\u00e9c "), max_size=30),
    st.lists(st.text(alphabet=st.sampled_from("ab\u00e9c"), min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_the_text_ends_just_before_the_first_stop_string_completed(s, stops):
    deltas, text = _stream(list(s.encode("utf-8")), tuple(stops))
    # generation stops at the first character that completes a stop string; the text ends before it
    want, stopped = s, False
    for end in range(1, len(s) + 1):
        hits = [i for i in (s[:end].find(x) for x in stops) if i >= 0]
        if hits:
            want, stopped = s[: min(hits)], True
            break
    assert "".join(deltas) == want == text.text
    assert text.stopped == stopped


def test_text_that_may_start_a_stop_string_is_held_back_until_it_cannot():
    text = IncrementalText(TOK, [65], ("END",))
    assert text.push(ord("a")) == "a"
    assert text.push(ord("E")) == ""  # could be the start of END
    assert text.push(ord("N")) == ""
    assert text.push(ord("x")) == "ENx"  # it was not
    assert text.push(ord("E")) == ""
    assert text.push(ord("N")) == "" and text.push(ord("D")) == ""
    assert text.stopped and text.text == "aENx"
    assert text.push(ord("z")) == ""


def test_end_of_sequence_adds_no_text():
    deltas, text = _stream([ord("o"), ord("k"), TOK.eos_token_id])
    assert "".join(deltas) == "ok" == text.text
