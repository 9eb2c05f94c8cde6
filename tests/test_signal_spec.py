"""The signal is part of the spec: Policy(signal=...), the spec key, round trips, old specs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ead_sdk
from ead_sdk import SignalSpec, SignalUnavailableError, SpecError, load_policy
from ead_sdk.escalation import ESCALATIONS
from ead_sdk.specs import SPEC_KEYS
from ead_sdk.testing.routers import example_spec

signals = st.one_of(st.just(SignalSpec()), st.integers(1, 64).map(SignalSpec.topk))
signal_values = signals.flatmap(lambda s: st.sampled_from([s, s.as_json(), json.loads(json.dumps(s.as_json()))]))


@given(st.sampled_from(sorted(ead_sdk.installed_policies())), signal_values, st.sampled_from(ESCALATIONS))
def test_every_policy_round_trips_its_signal(name, signal, escalation):
    """load_policy(json(policy.spec())) has the signal asked for, and the same spec."""
    spec = {**example_spec(name), "signal": signal if not isinstance(signal, SignalSpec) else signal.as_json()}
    if name != "cost_budget":  # the budget's lanes must start on model 0; the others take any mode
        spec["escalation"] = escalation
    policy = load_policy(spec)
    expected = SignalSpec.from_json(signal)
    assert isinstance(policy.signal, SignalSpec) and policy.signal == expected
    written = policy.spec()
    assert written["signal"] == expected.as_json()
    again = load_policy(json.loads(json.dumps(written)))
    assert again.signal == expected and again.spec() == written


def test_signal_is_a_spec_key_and_defaults_to_the_exact_entropy():
    assert "signal" in SPEC_KEYS
    old = {"policy": "rolling_entropy", "params": {"threshold": 2.0}}  # written before the key existed
    policy = load_policy(old)
    assert policy.signal == SignalSpec() and policy.signal.exact
    assert policy.spec()["signal"] == "entropy"
    assert load_policy({**old, "signal": None}).signal.exact


def test_policy_constructor_takes_every_form_of_the_signal():
    cls = type(load_policy("rolling_entropy"))
    assert cls(signal=SignalSpec.topk(20)).signal == SignalSpec("topk_entropy", 20)
    assert cls(signal={"kind": "topk_entropy", "k": 5}).signal.k == 5
    assert cls(signal="entropy").signal.exact
    assert "signal={'kind': 'topk_entropy', 'k': 5}" in repr(cls(signal=SignalSpec.topk(5)))
    assert "signal" not in repr(cls())


@pytest.mark.parametrize(
    "signal, message",
    [
        ({"kind": "topk_entropy"}, "needs k"),
        ({"kind": "topk_entropy", "k": 0}, "needs k"),
        ({"kind": "topk_entropy", "k": True}, "needs k"),
        ({"kind": "entropy", "k": 3}, "takes no k"),
        ({"kind": "topk_entropy", "k": 3, "unit": "bits"}, "unknown key"),
        ("topk", "signal must be"),
        ({"kind": "varentropy"}, "kind must be"),
    ],
)
def test_a_bad_signal_is_a_spec_error_naming_the_policy(signal, message):
    with pytest.raises(SpecError, match=f"policy 'rolling_entropy': .*{message}"):
        load_policy({"policy": "rolling_entropy", "signal": signal})
    with pytest.raises(ValueError, match=message):
        type(load_policy("rolling_entropy"))(signal=signal)


def test_cost_budget_inner_policy_reads_the_outer_signal():
    inner = {"policy": "rolling_entropy", "params": {"threshold": 1.0}}
    outer = {"policy": "cost_budget", "params": {"budget": 0.3, "inner": inner}, "signal": SignalSpec.topk(8).as_json()}
    policy = load_policy(outer)
    assert policy.inner.signal == SignalSpec.topk(8)
    same = {**inner, "signal": {"kind": "topk_entropy", "k": 8}}
    assert load_policy({**outer, "params": {"budget": 0.3, "inner": same}}).inner.signal.k == 8
    with pytest.raises(ead_sdk.ParameterError, match="inner' names signal 'entropy'.*the budget reads"):
        load_policy({**outer, "params": {"budget": 0.3, "inner": {**inner, "signal": "entropy"}}})


def test_require_refuses_a_place_that_cannot_give_the_signal():
    SignalSpec.topk(20).require(exact=False, max_k=20, where="engine 'large'")
    SignalSpec().require(exact=True, max_k=0, where="engine 'large'")
    with pytest.raises(SignalUnavailableError, match="engine 'small' returns top-5"):
        SignalSpec.topk(20).require(exact=False, max_k=5, where="engine 'small'")
    with pytest.raises(SignalUnavailableError, match="exact entropy, which engine 'small' cannot give"):
        SignalSpec().require(exact=False, max_k=20, where="engine 'small'")
