"""The cost ledger against an independent, closed-form reference of the counting convention."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk import CostLedger, CostModel, EadError

# One lane's history: for each generated position, the models that computed it, in order
# (one model, or a smaller then a larger one when a retry escalated); the last one emitted.
position = st.one_of(
    st.integers(0, 2).map(lambda m: (m,)),
    st.tuples(st.integers(0, 1), st.integers(1, 2)).filter(lambda p: p[1] > p[0]),
)
lane_history = st.lists(position, min_size=1, max_size=30)


def reference(history, prompt_len, num_models=3):
    """Closed form: a model that last computed position t consumed t + 1 inputs in all."""
    computed = {m: [t for t, ms in enumerate(history) if m in ms] for m in range(num_models)}
    steps = [len(computed[m]) for m in range(num_models)]
    consumed = [(max(computed[m]) + 1) if computed[m] else 0 for m in range(num_models)]
    emitted_by = [ms[-1] for ms in history]
    return {
        "steps": steps,
        "catchup": [consumed[m] - steps[m] for m in range(num_models)],
        "wasted": [sum(1 for ms in history if m in ms[:-1]) for m in range(num_models)],
        "emitted": [emitted_by.count(m) for m in range(num_models)],
        "prefill": [prompt_len - 1 if computed[m] else 0 for m in range(num_models)],
        "switches": sum(a != b for a, b in zip(emitted_by, emitted_by[1:], strict=False)),
    }


@given(st.lists(lane_history, min_size=1, max_size=5), st.data())
def test_ledger_matches_closed_form(histories, data):
    """Vectorised ledger counts == the closed-form reference, lane by lane."""
    n = len(histories)
    prompts = np.asarray(data.draw(st.lists(st.integers(1, 20), min_size=n, max_size=n)))
    ledger = CostLedger(n, 3, prompts)
    for t in range(max(len(h) for h in histories)):
        lanes = [i for i, h in enumerate(histories) if t < len(h)]
        first = np.asarray([histories[i][t][0] for i in lanes])
        ledger.compute(np.asarray(lanes), first, np.full(len(lanes), t))
        retry = [(i, histories[i][t]) for i in lanes if len(histories[i][t]) == 2]
        if retry:
            rl = np.asarray([i for i, _ in retry])
            ledger.waste(rl, np.asarray([ms[0] for _, ms in retry]))
            ledger.compute(rl, np.asarray([ms[1] for _, ms in retry]), np.full(len(retry), t))
        ledger.emit(np.asarray(lanes), np.asarray([histories[i][t][-1] for i in lanes]))
    for i, h in enumerate(histories):
        ref = reference(h, int(prompts[i]))
        assert ledger.steps[i].tolist() == ref["steps"]
        assert ledger.catchup[i].tolist() == ref["catchup"]
        assert ledger.wasted[i].tolist() == ref["wasted"]
        assert ledger.emitted[i].tolist() == ref["emitted"]
        assert ledger.prefill[i].tolist() == ref["prefill"]
        assert int(ledger.switches[i]) == ref["switches"]
    costs = CostModel.from_param_counts([1, 4, 10])
    report = ledger.report(costs)
    per_lane = ledger.per_lane(costs)
    assert report.tokens == sum(len(h) for h in histories) == int(per_lane["tokens"].sum())
    assert report.cost == pytest.approx(float(per_lane["cost"].sum()))
    forwards = ledger.steps.sum(0) + ledger.catchup.sum(0)
    assert report.cost_ratio == pytest.approx(float((forwards * [1, 4, 10]).sum() / (10 * report.tokens)))
    assert report.large_share == pytest.approx(ledger.emitted[:, 2].sum() / report.tokens)


@pytest.mark.parametrize("model, ratio", [(1, 1.0), (0, 0.1)])
def test_single_model_runs(model, ratio):
    ledger = CostLedger(2, 2, [5, 3])
    for t in range(8):
        ledger.compute(np.arange(2), np.full(2, model), np.full(2, t))
        ledger.emit(np.arange(2), np.full(2, model))
    report = ledger.report(CostModel.from_param_counts([1, 10]))
    assert report.cost_ratio == pytest.approx(ratio)
    assert report.switches == 0 and report.catchup == (0, 0)
    assert report.prefill[model] == 4 + 2
    assert report.large_share == (1.0 if model == 1 else 0.0)


def test_catch_up_after_idle_is_one_count_per_missed_token():
    ledger = CostLedger(1, 2, [4])
    for t in range(5):
        ledger.compute(np.array([0]), np.array([0]), np.array([t]))
        ledger.emit(np.array([0]), np.array([0]))
    behind = ledger.compute(np.array([0]), np.array([1]), np.array([5]))
    assert behind.tolist() == [5]  # inputs 0..4 missed, input 5 is its step forward
    assert ledger.catchup[0].tolist() == [0, 5] and ledger.prefill[0].tolist() == [3, 3]


def test_ledger_refuses_going_back_and_mismatched_cost_model():
    ledger = CostLedger(1, 2)
    ledger.compute(np.array([0]), np.array([0]), np.array([3]))
    with pytest.raises(EadError, match="already passed"):
        ledger.compute(np.array([0]), np.array([0]), np.array([1]))
    with pytest.raises(EadError, match="3 models"):
        ledger.report(CostModel.from_param_counts([1, 2, 3]))


def test_cost_model_validation():
    with pytest.raises(EadError, match="positive"):
        CostModel.from_param_counts([1, 0])
    with pytest.raises(EadError, match="names"):
        CostModel.from_param_counts([1, 2], names=["a"])
    assert CostModel.from_seconds_per_token([0.01, 0.05]).unit == "seconds"


@given(st.lists(lane_history, min_size=1, max_size=4), st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3))
def test_catch_up_priced_apart(histories, catchup_costs):
    """cost = sum(steps x decode cost) + sum(catch-up x catch-up cost); equal prices give the default."""
    ledger = CostLedger(len(histories), 3)
    for t in range(max(len(h) for h in histories)):
        lanes = [i for i, h in enumerate(histories) if t < len(h)]
        for k in range(2):
            sel = [i for i in lanes if len(histories[i][t]) > k]
            if sel:
                ledger.compute(np.asarray(sel), np.asarray([histories[i][t][k] for i in sel]), np.full(len(sel), t))
        ledger.emit(np.asarray(lanes), np.asarray([histories[i][t][-1] for i in lanes]))
    decode = [0.01, 0.04, 0.1]
    plain = CostModel.from_seconds_per_token(decode)
    same = CostModel.from_seconds_per_token(decode, catchup_seconds=decode)
    priced = CostModel.from_seconds_per_token(decode, catchup_seconds=catchup_costs)
    steps, catchup = ledger.steps.sum(0).tolist(), ledger.catchup.sum(0).tolist()
    expected = sum(s * d for s, d in zip(steps, decode, strict=True)) + sum(
        c * p for c, p in zip(catchup, catchup_costs, strict=True)
    )
    assert ledger.report(priced).cost == pytest.approx(expected)
    assert ledger.report(priced).cost_ratio == pytest.approx(expected / (0.1 * ledger.report(priced).tokens))
    assert ledger.per_lane(priced)["cost"].sum() == pytest.approx(expected)
    assert ledger.report(same) == ledger.report(plain)
    assert CostModel(**priced.as_dict()) == priced


def test_catch_up_costs_validation():
    with pytest.raises(EadError, match="2 catch-up costs for 3"):
        CostModel((1, 2, 3), catchup_costs=(0, 1))
    with pytest.raises(EadError, match=">= 0"):
        CostModel((1, 2), catchup_costs=(0, -1))
    assert CostModel((1, 2), catchup_costs=(0, 0)).catchup_costs == (0.0, 0.0)


def test_sum_reports_of_lane_groups_equals_the_report_of_all_lanes():
    from ead_sdk.cost import sum_reports

    rng = np.random.default_rng(7)
    n, m = 6, 3
    ledger = CostLedger(n, m, rng.integers(1, 5, n))
    for t in range(12):
        models = rng.integers(0, m, n)
        ledger.compute(np.arange(n), models, np.full(n, t))
        ledger.emit(np.arange(n), models)
    costs = CostModel((1.0, 3.0, 9.0))
    parts = [ledger.report(costs, np.array(lanes)) for lanes in ([0, 1], [2], [3, 4, 5])]
    whole, summed = ledger.report(costs), sum_reports(parts, costs)
    got, want = summed.as_dict(), whole.as_dict()
    floats = {k for k, v in want.items() if isinstance(v, float)}
    assert {k: got[k] for k in floats} == pytest.approx({k: want[k] for k in floats})
    assert {k: v for k, v in got.items() if k not in floats} == {k: v for k, v in want.items() if k not in floats}
    with pytest.raises(ValueError, match="at least one report"):
        sum_reports([], costs)
