"""The measured cost model: pass counting in the live decoder, the fit, and the time prediction.

A simulated backend charges each forward pass a known time on a simulated clock (no sleeping,
no timing noise), so the measured model must recover those costs and predict a run's time exactly.
"""

from __future__ import annotations

import json

import array_api_compat.numpy as xp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk.timing as timing
from ead_sdk import generate
from ead_sdk.backend import Backend, BatchSession, DecodeRequest, Draw
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.errors import EadError
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy

STEP = (0.002, 0.020)
PASS = (0.005, 0.050)
PER_TOKEN = (0.0001, 0.003)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimulatedPair(Backend):
    """Two models whose passes cost STEP (1 token) or PASS + (w - 1) * PER_TOKEN on ``clock``."""

    def __init__(self, clock: Clock, seed: int = 0):
        self.clock, self.rng = clock, np.random.default_rng(seed)
        self.passes: list[tuple[int, int]] = []

    num_models = 2
    model_names = ("small", "large")
    param_counts = (10, 100)
    vocab_size = 50
    xp = xp

    def start(self, request: DecodeRequest) -> SimulatedSession:
        return SimulatedSession(self, request)


class SimulatedSession(BatchSession):
    def __init__(self, owner: SimulatedPair, request: DecodeRequest):
        self.owner = owner
        self.plen = np.array([len(p) for p in request.prompts])
        self.consumed = np.zeros((2, request.n), np.int64)

    def forward(self, model: int, lanes: np.ndarray, position: int) -> Draw:
        o = self.owner
        end = self.plen[lanes] + position
        width = int((end - self.consumed[model, lanes]).max())
        self.consumed[model, lanes] = end
        o.clock.now += STEP[model] if width == 1 else PASS[model] + (width - 1) * PER_TOKEN[model]
        o.passes.append((model, width))
        entropy = o.rng.uniform(0.0, 3.0, lanes.size)
        return Draw(entropy=entropy, token=o.rng.integers(0, 50, lanes.size))

    def append(self, position: int, tokens, lanes: np.ndarray) -> None:
        pass


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", c)
    return c


def test_measure_recovers_the_simulated_costs(clock):
    backend = SimulatedPair(clock)
    t = timing.measure_forward_times(backend, batch=3, repeats=2, policy=FixedPolicy(model=0))
    assert t.step == pytest.approx(STEP) and t.catchup_pass == pytest.approx(PASS)
    assert t.per_token == pytest.approx(PER_TOKEN)
    assert t.notes["step_overhead"] == 0.0  # the simulated loop spends no clock time outside forwards
    model = t.cost_model()
    assert model.unit == "seconds" and model.names == ("small", "large")
    assert CostModel.from_dict(json.loads(json.dumps(t.as_dict()["cost_model"]))) == model
    both = timing.combine_timings([t, t])
    assert both.step == t.step and both.per_token == pytest.approx(t.per_token)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), seed=st.integers(0, 10_000), window=st.integers(1, 4), new=st.integers(1, 24))
def test_prediction_from_a_live_report_is_the_simulated_time(batch, seed, window, new):
    clock = Clock()
    backend = SimulatedPair(clock, seed)
    model = CostModel(STEP, "seconds", catchup_costs=PER_TOKEN, catchup_pass_costs=PASS)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 50, rng.integers(1, 6)).tolist() for _ in range(batch)]
    for escalation in ("next", "retry", "retry_token"):
        policy = RollingEntropyPolicy(window=window, threshold=1.5, unit="nats", escalation=escalation)
        before, n_passes = clock.now, len(backend.passes)
        res = generate(backend, policy, prompts, max_new_tokens=new)
        assert sum(res.report.passes) == len(backend.passes) - n_passes
        assert model.predict_seconds(res.report) == pytest.approx(clock.now - before)
    large = generate(backend, FixedPolicy(model=1), prompts, max_new_tokens=new)
    before = clock.now
    large = generate(backend, FixedPolicy(model=1), prompts, max_new_tokens=new)
    assert model.large_only_seconds(res.report) == pytest.approx(clock.now - before)
    assert model.predict_seconds(large.report) == pytest.approx(clock.now - before)
    assert model.predicted_speedup(res.report) == pytest.approx(
        (clock.now - before) / model.predict_seconds(res.report)
    )


def test_forward_pass_counts_widths_with_the_prompt_on_a_first_pass():
    ledger = CostLedger(2, 2, prompt_lengths=[3, 5])
    ledger.forward_pass(np.array([0, 1]), 0, 0)  # first pass: prompt widths 3 and 5
    ledger.forward_pass(np.array([0, 1]), 0, 1)
    ledger.forward_pass(np.array([1]), 1, 2)  # large's first pass on lane 1: 5 - 1 + 2 + 1
    rep = ledger.report(CostModel.from_param_counts([1, 10]))
    assert rep.passes == (2, 1) and rep.pass_tokens == (5 + 1, 7) and rep.catchup_passes == (1, 1)
    assert ledger.report(CostModel.from_param_counts([1, 10]), np.array([0])).passes == ()


def test_prediction_without_passes_treats_each_lane_as_its_own_batch():
    rep = CostReport(
        tokens=10, emitted=(7, 3), forwards=(12, 5), catchup=(2, 2), wasted=(0, 0), prefill=(4, 4),
        switches=2, large_share=0.3, cost=0.0, cost_ratio=0.0, unit="seconds",
    )  # fmt: skip
    m = CostModel((1.0, 10.0), "seconds", catchup_costs=(0.1, 1.0), step_overhead=0.5)
    assert m.predict_seconds(rep) == pytest.approx(10 * 1.0 + 3 * 10.0 + 6 * 0.1 + 6 * 1.0 + 10 * 0.5)
    assert m.large_only_seconds(rep) == pytest.approx(10 * 10.5 + 4 * 1.0)


def test_bad_measurement_options_and_cost_fields_are_refused():
    with pytest.raises(EadError, match="widths"):
        timing.measure_forward_times(SimulatedPair(Clock()), widths=(0, 2))
    with pytest.raises(EadError, match="step_overhead"):
        CostModel((1.0,), step_overhead=-1)
    with pytest.raises(EadError, match="catch-up pass costs"):
        CostModel((1.0, 2.0), catchup_pass_costs=(1.0,))
    with pytest.raises(EadError, match="'costs' list"):
        CostModel.from_dict({"unit": "seconds"})


def test_calibrate_and_view_take_a_measured_cost_model_file(tmp_path):
    from typer.testing import CliRunner

    from ead_sdk.cli import app
    from ead_sdk.simulators import calibrate, synthetic_traces
    from ead_sdk.specs import load_policy
    from ead_sdk.traces import write_traces

    traces = synthetic_traces(16, 40, seed=5)
    path = write_traces(traces, tmp_path / "t.parquet")
    model = CostModel((0.002, 0.02), "seconds", ("small", "large"), (0.0001, 0.003), 0.001, (0.005, 0.05))
    cm_file = tmp_path / "measured.json"
    cm_file.write_text(json.dumps({"batch": 1, "cost_model": model.as_dict()}))  # ead eval --measure-cost's form
    args = ["calibrate", str(path), "-p", "rolling_entropy", "--param", "threshold", "--target-cost-ratio", "0.5"]
    res = CliRunner().invoke(app, [*args, "--cost-model", str(cm_file), "--json"])
    assert res.exit_code == 0, res.output
    want = calibrate(traces, load_policy("rolling_entropy"), "threshold", target_cost_ratio=0.5, cost_model=model)
    assert json.loads(res.stdout)["value"] == pytest.approx(want.value)
    default = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(default.stdout)["value"] != pytest.approx(want.value)  # the price changes the answer
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    res = CliRunner().invoke(app, [*args, "--cost-model", str(bad)])
    assert res.exit_code == 1 and "not valid JSON" in res.output
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["view", str(path), "--cost-model", str(cm_file), "--no-sweep", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert '"cost_unit":"seconds"' in out.read_text(encoding="utf-8")
