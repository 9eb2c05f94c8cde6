"""The escalation rule, stated once in plain Python and checked against `ead_sdk.escalation`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import ParameterError
from ead_sdk.escalation import ESCALATIONS, rule


def reference(mode: str, route: int, model: int) -> tuple[int, int, bool]:
    """(emitter of this position, model of the next one, whether this position was retried)."""
    if route > model and mode in ("retry", "retry_token"):
        return route, (model if mode == "retry_token" else route), True
    return model, route, False


@pytest.mark.parametrize("mode", ESCALATIONS)
@given(pairs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=20))
def test_rule_matches_the_plain_python_statement(mode, pairs):
    routes = np.array([r for r, _ in pairs], np.int64)
    model = np.array([m for _, m in pairs], np.int64)
    r = rule(mode)
    want = [reference(mode, a, b) for a, b in pairs]
    assert r.emitter(routes, model).tolist() == [w[0] for w in want]
    assert r.next_model(routes, model).tolist() == [w[1] for w in want]
    assert np.asarray(r.retried(routes, model)).tolist() == [w[2] for w in want]
    out = np.full(len(pairs), -1, np.int8)
    r.emitter(routes, model, out=out)
    assert out.tolist() == [w[0] for w in want]


def test_switch_tokens_count_what_a_granted_switch_hands_the_large_model():
    # next: the next token; retry: this one and the next; retry_token: this one only.
    assert [rule(m).switch_tokens for m in ESCALATIONS] == [1, 2, 1]


def test_unknown_mode_is_refused():
    with pytest.raises(ParameterError, match="escalation must be one of"):
        rule("later")
