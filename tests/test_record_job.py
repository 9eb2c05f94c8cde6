"""Recording many prompts: one bad lane, concurrent runs to one output, and the stream left by a crash."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ead_sdk.backends.hf import TransformersBackend, TransformersSession  # noqa: E402
from ead_sdk.decode import generate  # noqa: E402
from ead_sdk.errors import TraceError  # noqa: E402
from ead_sdk.policies.fixed import FixedPolicy  # noqa: E402
from ead_sdk.record_job import record_prompts, stream_path  # noqa: E402
from ead_sdk.recording import RecordingWarning  # noqa: E402
from ead_sdk.traces import TraceMeta, TraceWriter, read_traces, write_traces  # noqa: E402
from ead_sdk.traces.recover import recover  # noqa: E402
from tests.test_hf_backend import LARGE, SMALL, tiny  # noqa: E402

PROMPTS = [[5, 6, 7], [9], [11, 12, 13, 14]]


class NaNScoringSession(TransformersSession):
    """The idle model's teacher-forced scoring of lane 1 gives NaN at generated position 2."""

    def score(self, model: int, lanes: np.ndarray, generated: Any, k: int) -> Any:
        recs = super().score(model, lanes, generated, k)
        for lane, rec in zip(lanes.tolist(), recs, strict=True):
            if lane == 1 and rec.entropy.size > 2:
                rec.entropy[2] = np.nan
        return recs


class NaNScoring(TransformersBackend):
    """A backend whose batch sessions score lane 1 with a NaN (see `NaNScoringSession`)."""

    def start(self, request: Any) -> NaNScoringSession:
        super().start(request).close()  # the backend's own request checks
        return NaNScoringSession(self, request)


def test_a_bad_lane_is_reported_and_the_healthy_lanes_are_written(tmp_path: Path) -> None:
    """NaN in one lane's teacher-forced scoring no longer aborts the batch: the other lanes are written."""
    backend = NaNScoring([SMALL, LARGE], eos_token_id=[])
    path = tmp_path / "t.arrows"
    with pytest.warns(RecordingWarning, match=r"lane 1 not recorded: model 1 .* position 2"):
        res = generate(backend, FixedPolicy(model=0), PROMPTS, max_new_tokens=6, record=path, record_k=2)
    assert len(res) == 3
    assert [(s.lane, s.model, s.position, s.prompt) for s in res.recording_skipped] == [(1, 1, 2, (9,))]
    traces = read_traces(path)
    assert sorted(s.fields["sequence_id"] for s in traces.sequences()) == [0, 2]


def test_record_prompts_reports_the_bad_prompt_and_keeps_the_rest(tmp_path: Path) -> None:
    backend = NaNScoring([SMALL, LARGE], eos_token_id=[])
    backend.decode = lambda ids: "".join(chr(97 + i % 26) for i in ids)  # type: ignore[method-assign]
    backend.encode = lambda text: [ord(c) - 90 for c in text]  # type: ignore[method-assign]
    out = tmp_path / "o.parquet"
    with pytest.warns(RecordingWarning):
        res = record_prompts(
            backend, FixedPolicy(model=0), ["abc", "de", "fgh", "ij"], out, max_new_tokens=5, batch=2, k=2
        )
    assert res.out == out and res.sequences == 2
    assert [i for i, _ in res.problems] == [1, 3]
    assert "model 1" in res.problems[0][1] and "'de'" in res.problems[0][1]
    assert sorted(s.fields["sequence_id"] for s in read_traces(out).sequences()) == [0, 2]
    assert not stream_path(out).exists()


def test_a_second_recording_to_the_same_out_is_refused(tmp_path: Path) -> None:
    """While a run's stream exists (running, or killed), another run to the same --out is refused."""
    backend = TransformersBackend([SMALL, LARGE], eos_token_id=[])
    backend.encode = lambda text: [ord(c) - 90 for c in text]  # type: ignore[method-assign]
    out = tmp_path / "o.parquet"
    stream_path(out).write_bytes(b"")  # a run in progress (or killed) holds the stream
    with pytest.raises(TraceError, match=r"o.parquet.arrows exists: .*ead traces recover"):
        record_prompts(backend, FixedPolicy(model=0), ["abc"], out, max_new_tokens=3, k=0)
    assert stream_path(out).read_bytes() == b""
    stream_path(out).unlink()
    first = record_prompts(backend, FixedPolicy(model=0), ["abc"], out, max_new_tokens=3, k=0)
    assert first.sequences == 1
    with pytest.raises(TraceError, match="already exists"):
        record_prompts(backend, FixedPolicy(model=1), ["abc"], out, max_new_tokens=3, k=0)


def test_write_traces_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path, monkeypatch) -> None:
    """The existence check and the rename are one atomic step: a concurrent writer's file survives."""
    backend = TransformersBackend([SMALL, LARGE], eos_token_id=[])
    generate(backend, FixedPolicy(model=0), PROMPTS, max_new_tokens=3, record=tmp_path / "a.arrows")
    traces = read_traces(tmp_path / "a.arrows")
    dest = tmp_path / "o.parquet"
    real_link = os.link

    def racing_link(src: Any, dst: Any) -> None:
        Path(dst).write_bytes(b"the other run")  # another process publishes first
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(TraceError, match="already exists"):
        write_traces(traces, dest)
    assert dest.read_bytes() == b"the other run"


def read_traces_meta(backend: TransformersBackend) -> TraceMeta:
    return TraceMeta(1, backend.model_names, backend.param_counts, backend.vocab_size, "", 0)


def test_recover_keeps_the_complete_batches_of_a_cut_stream(tmp_path: Path) -> None:
    backend = TransformersBackend([SMALL, LARGE], eos_token_id=[])
    stream = tmp_path / "s.arrows"
    meta = read_traces_meta(backend)
    with TraceWriter(stream, meta, batch_rows=1) as writer:  # one batch per sequence, as `ead record` writes
        generate(backend, FixedPolicy(model=0), PROMPTS, max_new_tokens=4, record=writer)
    whole = read_traces(stream)
    data = stream.read_bytes()
    stream.write_bytes(data[: len(data) - 200])  # cut inside the last batch, as a kill -9 would
    res = recover(stream, tmp_path / "r.parquet")
    got = read_traces(res.path)
    assert 1 <= res.sequences < len(whole) and res.notes
    assert got.table.equals(whole.table.slice(0, res.sequences))


def test_a_lane_failing_live_is_isolated_and_the_others_recorded(tmp_path: Path) -> None:
    """A live non-finite distribution aborts the batch's decode loop; each unfinished prompt is then
    retried alone, so only the prompt that fails is reported (with its index and text)."""
    broken = tiny(2, 32, seed=3)
    with torch.no_grad():
        broken.model.embed_tokens.weight[40] = float("nan")  # any lane whose prompt holds token 40
    backend = TransformersBackend([SMALL, broken], eos_token_id=[])
    backend.encode = lambda text: [ord(c) - 60 for c in text]  # type: ignore[method-assign]
    out = tmp_path / "o.parquet"
    prompts = ["abc", "de", "dd", "fgh"]  # 'd' is token 40
    res = record_prompts(backend, FixedPolicy(model=1), prompts, out, max_new_tokens=4, batch=4, k=0)
    assert [i for i, _ in res.problems] == [1, 2]
    assert "non-finite logits" in res.problems[0][1] and "'de'" in res.problems[0][1]
    assert sorted(s.fields["sequence_id"] for s in read_traces(out).sequences()) == [0, 3]
