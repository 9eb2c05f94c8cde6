"""A top-k signal in replay, sweep, calibrate and the live loop: computed from the recorded top-k."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk
from ead_sdk import SignalSpec, SignalUnavailableError, load_policy
from ead_sdk.backends.trace import TraceBackend
from ead_sdk.interface import ESCALATIONS, Policy
from ead_sdk.simulators import ReplayData, calibrate, replay, sweep, synthetic_traces
from ead_sdk.traces import TraceSet, write_traces

ROLLING = {"policy": "rolling_entropy", "params": {"threshold": 0.8, "window": 2, "unit": "nats"}}


def with_signal(spec: dict, k: int | None) -> dict:
    return {**spec, "signal": SignalSpec.topk(k).as_json() if k else "entropy"}


def zipf_traces(n: int, length, k: int, seed: int) -> TraceSet:
    """Synthetic sequences whose distributions are Zipf laws over 1000 tokens (exponent per position).

    The synthetic generator's geometric laws are ones the estimate recovers exactly; a Zipf tail
    is heavier, so there the top-k estimate and the exact entropy differ.
    """
    traces = synthetic_traces(n, length, k=k, seed=seed)
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, traces.meta.vocab_size + 1, dtype=np.float64)
    seqs = []
    for s in traces.sequences():
        exponent = rng.uniform(0.7, 2.5, size=s.entropy.shape)[..., None]  # (T, M, 1)
        logp = -exponent * np.log(ranks)
        logp -= np.logaddexp.reduce(logp, axis=-1, keepdims=True)
        entropy = -(np.exp(logp) * logp).sum(-1)
        seqs.append(
            dataclasses.replace(s, entropy=entropy.astype(np.float32), top_logprobs=logp[..., :k].astype(np.float32))
        )
    return TraceSet.from_sequences(traces.meta, seqs)


def estimated_trace(traces: TraceSet, k: int) -> TraceSet:
    """The trace with its entropy column replaced by the top-k estimate, sequence by sequence."""
    vocab = traces.meta.vocab_size
    seqs = [
        dataclasses.replace(
            s,
            entropy=np.asarray(ead_sdk.topk_entropy_estimate(s.top_logprobs[..., :k], vocab), np.float32),
        )
        for s in traces.sequences()
    ]
    return TraceSet.from_sequences(traces.meta, seqs)


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), escalation=st.sampled_from(ESCALATIONS))
def test_topk_replay_is_exact_replay_of_the_estimated_trace(seed, k, escalation):
    """Replaying with signal top-k equals replaying on the exact signal of a trace whose entropy is the estimate."""
    traces = zipf_traces(6, (1, 30), k=4, seed=seed)
    spec = {**ROLLING, "escalation": escalation}
    fast = replay(traces, load_policy(with_signal(spec, k)), with_topk=False)
    slow = replay(estimated_trace(traces, k), load_policy(spec), with_topk=False)
    for lane in range(len(traces)):
        assert fast.routes(lane).tolist() == slow.routes(lane).tolist()
    assert fast.report() == slow.report()
    assert fast.policy_spec["signal"] == {"kind": "topk_entropy", "k": k}


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3), escalation=st.sampled_from(ESCALATIONS))
def test_generate_on_the_trace_backend_equals_topk_replay(seed, k, escalation):
    """The live loop computes the same top-k signal as replay: same routes and costs."""
    traces = zipf_traces(4, (1, 25), k=3, seed=seed)
    policy = load_policy(with_signal({**ROLLING, "escalation": escalation}, k))
    live = ead_sdk.generate(TraceBackend(traces), policy)
    fast = replay(traces, policy)
    for lane in range(len(traces)):
        assert list(live[lane].models) == fast.routes(lane).tolist()
    assert live.report == fast.report()


class Probe(Policy):
    """Routes to the small model and remembers what each step showed it (tests only)."""

    name = "signal_probe"
    seen: list = []

    def init_state(self, n, xp, device=None):
        return {}

    def decide(self, state, step):
        type(self).seen.append(
            (np.asarray(step.entropy).copy(), None if step.logprobs is None else step.logprobs.shape)
        )
        return np.zeros(step.n, np.int64), state


def test_a_topk_signal_shows_the_policy_only_its_k():
    traces = synthetic_traces(3, 5, k=4, seed=1)
    Probe.seen = []
    replay(traces, Probe(signal=SignalSpec.topk(2)))
    assert {shape for _, shape in Probe.seen} == {(3, 2)}
    Probe.seen = []
    ead_sdk.generate(TraceBackend(traces), Probe(signal=SignalSpec.topk(2)))
    assert {shape for _, shape in Probe.seen} == {(3, 2)}
    Probe.seen = []
    replay(traces, Probe())
    assert {shape for _, shape in Probe.seen} == {(3, 4)}
    first = Probe.seen[0][0]
    np.testing.assert_array_equal(first, ReplayData.from_traces(traces).entropy[0, :, 0])


def test_a_trace_with_a_smaller_k_is_refused_everywhere(tmp_path):
    traces = synthetic_traces(8, 10, k=4, seed=2)
    policy = load_policy(with_signal(ROLLING, 5))
    match = r"recorded top-4 log-probabilities; the policy's signal, the top-5 entropy estimate, needs top-5"
    with pytest.raises(SignalUnavailableError, match=match):
        replay(traces, policy)
    with pytest.raises(SignalUnavailableError, match=match):
        sweep(traces, policy, {"threshold": [0.5, 1.0]})
    with pytest.raises(SignalUnavailableError, match=match):
        calibrate(traces, policy, "threshold", target_large_share=0.3)
    path = write_traces(traces, tmp_path / "t.parquet")
    with pytest.raises(SignalUnavailableError, match=match):
        sweep(path, policy, {"threshold": [0.5, 1.0]})
    with pytest.raises(SignalUnavailableError, match="the backend TraceBackend returns top-4"):
        ead_sdk.generate(TraceBackend(traces), policy)
    none = synthetic_traces(3, 5, k=0, seed=2)
    with pytest.raises(SignalUnavailableError, match="recorded no top-k log-probabilities"):
        replay(none, policy)
    assert isinstance(SignalUnavailableError("x"), ead_sdk.SpecError)


def test_sweep_and_calibrate_compute_the_estimate_once(monkeypatch):
    """Vectorised: one estimate per trace and k, whatever the number of configurations or probes."""
    replay_module = importlib.import_module("ead_sdk.simulators.replay")  # the module, not the function
    calls = []
    real = replay_module.topk_signal
    monkeypatch.setattr(replay_module, "topk_signal", lambda *a: calls.append(a[1]) or real(*a))
    traces = zipf_traces(20, (5, 40), k=4, seed=3)
    data = ReplayData.from_traces(traces)
    policy = load_policy(with_signal(ROLLING, 3))
    result = sweep(data, policy, {"threshold": [0.2, 0.5, 0.8, 1.1], "window": [1, 3]})
    assert calls == [3]
    for row, config in zip(result.table.to_pylist(), result.configs, strict=True):
        single = replay(data, load_policy({**with_signal(ROLLING, 3), "params": {**ROLLING["params"], **config}}))
        assert row["large_share"] == pytest.approx(single.summary()["large_share"])
    assert calls == [3]
    replay(data, load_policy(with_signal(ROLLING, 2)))
    assert calls == [3, 2]
    chosen = calibrate(traces, policy, "threshold", target_large_share=0.3, held_out=0.0)
    assert chosen.policy.signal == SignalSpec.topk(3)
    assert calls == [3, 2, 3]  # one more: calibrate lays out its own split once


def test_calibrate_reaches_the_target_on_the_topk_signal():
    traces = zipf_traces(60, (20, 60), k=4, seed=4)
    exact = calibrate(traces, load_policy(ROLLING), "threshold", target_large_share=0.3, held_out=0.0)
    topk = calibrate(traces, load_policy(with_signal(ROLLING, 2)), "threshold", target_large_share=0.3, held_out=0.0)
    assert topk.calibration == pytest.approx(0.3, abs=0.02)
    assert topk.policy.spec()["signal"] == {"kind": "topk_entropy", "k": 2}
    # A Zipf tail is heavier than a geometric one: the estimate runs below the exact entropy,
    # so the same share is reached at a lower threshold.
    assert topk.value < exact.value


def test_the_estimate_differs_from_the_exact_entropy_on_heavy_tails():
    data = ReplayData.from_traces(zipf_traces(10, 20, k=4, seed=5))
    gap = data.entropy - data.signal_entropy(SignalSpec.topk(4))
    live = data.entropy > 0
    assert (gap[live] > 1e-3).mean() > 0.9


def test_generate_on_transformers_shows_the_topk_estimate_of_the_live_distribution():
    """The live loop on torch: Step.entropy is the estimate from the draw's own top-k, per lane."""
    pytest.importorskip("transformers")
    import torch

    from ead_sdk.backends.hf import TransformersBackend
    from ead_sdk.testing.models import tiny_llama

    torch.set_num_threads(1)
    models = [tiny_llama(1, 16, vocab=96, seed=1, max_positions=64), tiny_llama(1, 24, vocab=96, seed=2)]
    backend = TransformersBackend(models, eos_token_id=[])
    shown = []

    class Keep(Probe):
        def decide(self, state, step):
            shown.append((step.entropy.clone(), step.logprobs.clone()))
            return torch.zeros(step.n, dtype=torch.int64), state

    ead_sdk.generate(backend, Keep(signal=SignalSpec.topk(5)), [[3, 4, 5], [6, 7]], max_new_tokens=4, logprobs=8)
    assert len(shown) == 4
    for entropy, logprobs in shown:
        assert logprobs.shape == (2, 8)  # the larger of the asked 8 and the signal's 5
        expected = ead_sdk.topk_entropy_estimate(logprobs[:, :5].numpy(), vocab_size=96)
        np.testing.assert_allclose(entropy.numpy(), expected, rtol=1e-6)


def test_policy_observer_shows_the_topk_estimate_and_records_the_exact_entropy():
    pytest.importorskip("transformers")
    import torch

    from ead_sdk.integrations import PolicyObserver
    from tests.test_integrations_observe import MODEL, batch, reference, reference_topk, run

    shown = []

    class Keep(Probe):
        def decide(self, state, step):
            shown.append(step.entropy.clone())
            return torch.zeros(step.n, dtype=torch.int64), state

    ids, mask = batch([[5, 9, 11, 3], [7, 8]])
    observer = PolicyObserver(Keep(signal=SignalSpec.topk(4)), model=MODEL)
    out = run(ids, mask, observer, 0, max_new_tokens=6, eos_token_id=[])
    seen = observer.finish(out, attention_mask=mask)
    top = reference_topk(ids, mask, out, 4).values.numpy()
    expected = ead_sdk.topk_entropy_estimate(top, vocab_size=MODEL.config.vocab_size)
    np.testing.assert_allclose(torch.stack(shown, 1).numpy(), expected, rtol=1e-4, atol=1e-5)
    exact, _ = reference(ids, mask, out)
    np.testing.assert_allclose(np.stack([lane.entropy for lane in seen.lanes]), exact, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, exact, atol=1e-3)
