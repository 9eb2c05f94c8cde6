"""Live recording: a trace written while decoding replays to the same routes and costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ead_sdk.interface import ESCALATIONS

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ead_sdk.backends.hf import TransformersBackend  # noqa: E402
from ead_sdk.backends.trace import TraceBackend  # noqa: E402
from ead_sdk.decode import generate, stream  # noqa: E402
from ead_sdk.errors import BackendError  # noqa: E402
from ead_sdk.interface import Step  # noqa: E402
from ead_sdk.policies.fixed import FixedPolicy  # noqa: E402
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy  # noqa: E402
from ead_sdk.traces import read_traces  # noqa: E402
from tests.test_hf_backend import LARGE, SMALL, VOCAB, TokenMod  # noqa: E402

PROMPTS = [[5, 6, 7], [9], [11, 12, 13, 14]]


def backend(**kw: Any) -> TransformersBackend:
    return TransformersBackend([SMALL, LARGE], eos_token_id=kw.pop("eos_token_id", []), **kw)


def median_entropy() -> float:
    """A threshold in nats that makes rolling_entropy switch on these models."""
    with torch.inference_mode():
        logits = SMALL(input_ids=torch.tensor([PROMPTS[0]], device=SMALL.device)).logits[0].float()
    from ead_sdk.signals import entropy

    return float(entropy(logits).median())


@pytest.mark.parametrize("escalation", ESCALATIONS)
def test_recorded_trace_replays_to_same_routes_and_costs(tmp_path: Path, escalation: str) -> None:
    """A trace recorded live, decoded again on the trace backend (and by the replay engine when
    installed) with the same policy, gives the same tokens, routes and costs."""
    policy = RollingEntropyPolicy(window=2, threshold=median_entropy(), unit="nats", escalation=escalation)
    path = tmp_path / "live.arrows"
    live = generate(backend(), policy, PROMPTS, max_new_tokens=10, record=path, record_k=4)
    traces = read_traces(path)
    assert len(traces) == len(PROMPTS)
    seqs = sorted(traces.sequences(), key=lambda s: s.fields["sequence_id"])
    for lane, seq in zip(live, seqs, strict=True):
        assert seq.token_ids.tolist() == list(lane.tokens)
        assert seq.emitted_by.tolist() == list(lane.models)
        assert seq.top_ids.shape == (len(lane.tokens), 2, 4)
        assert np.all(np.isfinite(seq.entropy))
    assert 0 < live.report.large_share < 1, "the policy should switch on this data"
    again = generate(TraceBackend(traces.take([s.fields["sequence_id"] for s in seqs])), policy)
    for a, b in zip(live, again, strict=True):
        assert a.tokens == b.tokens and a.models == b.models
        assert a.report == b.report
    # Scoring the idle models is paid apart, never in the routing report.
    assert live.recording_cost is not None and live.recording_cost.cost > 0
    assert live.recording_cost.tokens == 0
    from ead_sdk.simulators.replay import replay

    ordered = traces.take([s.fields["sequence_id"] for s in seqs])
    replayed = replay(ordered, policy)
    for i, lane in enumerate(live):
        assert replayed.routes(i).tolist() == list(lane.models)
        assert replayed.report(np.array([i])) == lane.report
    assert replayed.report() == live.report


def test_recorded_values_are_the_ones_the_policy_saw(tmp_path: Path) -> None:
    """Entropies recorded for the emitting model equal Step.entropy; idle models' entries are
    teacher-forced scores equal to a from-scratch forward pass."""
    seen: list[Step] = []

    class Spy(TokenMod):
        def decide(self, state, step):  # type: ignore[no-untyped-def]
            seen.append(step)
            return super().decide(state, step)

    path = tmp_path / "spy.arrows"
    out = generate(backend(), Spy(), [PROMPTS[0]], max_new_tokens=6, record=path)
    (seq,) = read_traces(path).sequences()
    for t, step in enumerate(seen):
        m = int(step.model[0])
        assert seq.entropy[t, m] == pytest.approx(float(step.entropy[0]), abs=1e-6)
    with torch.inference_mode():
        ids = torch.tensor([PROMPTS[0] + list(out[0].tokens[:-1])])
        for m, model in enumerate([SMALL, LARGE]):
            lp = torch.log_softmax(model(input_ids=ids).logits[0, len(PROMPTS[0]) - 1 :, :VOCAB].float(), -1)
            tok = torch.tensor(out[0].tokens)
            np.testing.assert_allclose(seq.token_logprob[:, m], lp.gather(1, tok[:, None])[:, 0].numpy(), atol=1e-4)


def test_interrupted_run_leaves_readable_trace(tmp_path: Path) -> None:
    """A run that fails mid-way leaves a trace holding exactly the sequences completed before."""
    free = generate(backend(), FixedPolicy(model=1), PROMPTS, max_new_tokens=8)
    stop_id = free[1].tokens[1]  # lane 1 ends at its second token

    class Crash(FixedPolicy):
        def decide(self, state, step):  # type: ignore[no-untyped-def]
            if int(step.index[0]) == 4:
                raise KeyboardInterrupt
            return super().decide(state, step)

    path = tmp_path / "crash.arrows"
    with pytest.raises(KeyboardInterrupt):
        generate(backend(), Crash(model=1), PROMPTS, max_new_tokens=8, stop=[stop_id], record=path)
    traces = read_traces(path)
    done = traces.sequences()
    finished = [i for i in range(3) if stop_id in free[i].tokens[:4]]
    assert [s.fields["sequence_id"] for s in done] == finished
    for seq in done:
        tokens = list(free[seq.fields["sequence_id"]].tokens)
        assert seq.token_ids.tolist() == tokens[: tokens.index(stop_id) + 1]

    # Closing a stream early behaves the same.
    path2 = tmp_path / "closed.arrows"
    s = stream(backend(), FixedPolicy(model=1), PROMPTS, max_new_tokens=8, stop=[stop_id], record=path2)
    for event in s:
        if event.index == 3:
            break
    s.close()
    assert len(read_traces(path2)) == len(done)


def test_recording_errors(tmp_path: Path) -> None:
    """A writer for another ladder, or a bad record_k, is refused before decoding starts."""
    with pytest.raises(BackendError, match="record_k"):
        generate(backend(), TokenMod(), PROMPTS, max_new_tokens=2, record=tmp_path / "x.arrows", record_k=-1)
    from ead_sdk.traces import TraceMeta, TraceWriter

    meta = TraceMeta(1, ("a", "b", "c"), (1, 2, 3), VOCAB, "", 0)
    with TraceWriter(tmp_path / "w.arrows", meta) as writer, pytest.raises(BackendError, match="3 models"):
        generate(backend(), TokenMod(), PROMPTS, max_new_tokens=2, record=writer)
