"""Live trace recording: the decode loop writes each finished sequence in the trace format.

For every position, the models that computed it live (the routed one, and a retry's larger one)
are recorded with exactly the values the policy saw. The trace format needs every model's
signals at every position, so the models that were idle are then scored teacher-forced along
the finished trajectory; those forwards are the *recording cost*, reported apart from the
routing cost. Sequences are written as they finish and flushed every step, so an interrupted
run leaves a readable trace of the sequences completed before it stopped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ead_sdk.backend import Backend, BatchSession, DecodeRequest, Sampling
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.errors import BackendError, RecordingWarning, TraceError
from ead_sdk.interface import Policy

if TYPE_CHECKING:
    from ead_sdk.traces import TraceMeta


@dataclass(frozen=True)
class SkippedLane:
    """A lane whose sequence was not written to the trace, and why.

    Attributes:
        lane: the lane (prompt index) within the batch.
        prompt: the prompt's token ids.
        model: the model whose signals were bad (``None`` when the trace writer refused the row).
        position: the generated position of the first bad value (``None`` when unknown).
        reason: what was wrong, in words.
    """

    lane: int
    prompt: tuple[int, ...]
    model: int | None
    position: int | None
    reason: str


def _first_bad(
    entropy: np.ndarray, token_logprob: np.ndarray, top_logprobs: np.ndarray | None
) -> tuple[int, int] | None:
    """``(position, model)`` of the first non-finite recorded signal of one lane, or ``None``."""
    bad = ~np.isfinite(entropy) | np.isnan(token_logprob) | (token_logprob > 0.0 + 1e-3)
    if top_logprobs is not None and top_logprobs.size:
        bad |= np.isnan(top_logprobs).any(axis=-1)
    hits = np.argwhere(bad)
    return (int(hits[0][0]), int(hits[0][1])) if hits.size else None


def recording_meta(
    backend: Backend,
    policy: Policy,
    *,
    k: int,
    sampling: Sampling,
    max_new_tokens: int,
    stop: Sequence[str],
    recorded_by: str,
    k_name: str = "k",
) -> TraceMeta:
    """The trace metadata of a recording by ``policy`` over ``backend``'s models, keeping top-``k``."""
    from ead_sdk.traces import FORMAT_VERSION, TraceMeta

    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= backend.vocab_size:
        raise BackendError(f"{k_name} must be an integer in [0, {backend.vocab_size}], got {k!r}")
    return TraceMeta(
        format_version=FORMAT_VERSION,
        model_names=backend.model_names,
        param_counts=backend.param_counts,
        vocab_size=backend.vocab_size,
        tokenizer_fingerprint=backend.tokenizer_fingerprint,
        k=k,
        generation={
            "sampling": sampling.as_dict(),
            "max_new_tokens": max_new_tokens,
            "stop": list(stop),
            "policy": policy.spec(),
            "recorded_by": recorded_by,
        },
    )


class LiveRecorder:
    """Collects one batch's per-position signals and writes finished sequences to a writer."""

    def __init__(self, writer: Any, backend: Backend, owns_writer: bool):
        self.writer = writer
        self.backend = backend
        self.owns_writer = owns_writer
        self.meta = writer.meta
        self.k = int(self.meta.k)

    @classmethod
    def open(cls, record: Any, backend: Backend, policy: Policy, request: DecodeRequest, k: int = 0) -> LiveRecorder:
        """A recorder writing to ``record``: a path (a new trace stream) or a `TraceWriter`."""
        from ead_sdk.traces import TraceWriter

        if isinstance(record, (str, os.PathLike)):
            meta = recording_meta(
                backend,
                policy,
                k=k,
                sampling=request.sampling,
                max_new_tokens=request.max_new_tokens,
                stop=request.stop,
                recorded_by="ead_sdk.generate",
                k_name="record_k",
            )
            return cls(TraceWriter(record, meta, batch_rows=max(request.n, 1)), backend, owns_writer=True)
        meta = getattr(record, "meta", None)
        if meta is None or not callable(getattr(record, "write", None)):
            raise BackendError(f"record must be a path or a TraceWriter, got {type(record).__name__}")
        if meta.num_models != backend.num_models or int(meta.vocab_size) != backend.vocab_size:
            raise BackendError(
                f"the trace writer is for {meta.num_models} models and vocabulary {meta.vocab_size}; "
                f"the backend has {backend.num_models} models and vocabulary {backend.vocab_size}"
            )
        return cls(record, backend, owns_writer=False)

    def begin(self, request: DecodeRequest, session: BatchSession) -> None:
        """Allocate the batch's buffers (NaN marks what no model computed live)."""
        n, t, m, k = request.n, request.max_new_tokens, self.backend.num_models, self.k
        self.request = request
        self.session = session
        self.entropy = np.full((n, t, m), np.nan, np.float32)
        self.token_logprob = np.full((n, t, m), np.nan, np.float32)
        self.top_ids = np.zeros((n, t, m, k), np.int32)
        self.top_logprobs = np.full((n, t, m, k), np.nan, np.float32)
        self.written = np.zeros(n, bool)
        self.skipped: list[SkippedLane] = []
        self.ledger = CostLedger(n, m, [len(p) for p in request.prompts])

    def step(self, position: int, computed: list[tuple[int, np.ndarray]], tokens: np.ndarray) -> None:
        """Store what each model computed live at ``position``; ``tokens`` are the emitted ones."""
        for model, lanes in computed:
            rec = self.session.record_rows(model, lanes, tokens[lanes], self.k)
            self.entropy[lanes, position, model] = rec.entropy
            self.token_logprob[lanes, position, model] = rec.token_logprob
            if self.k:
                self.top_ids[lanes, position, model] = rec.top_ids
                self.top_logprobs[lanes, position, model] = rec.top_logprobs

    def lanes_done(self, lanes: np.ndarray, tokens: np.ndarray, emitters: np.ndarray, length: np.ndarray) -> None:
        """Score the idle models of finished ``lanes``, write them, and flush."""
        lanes = np.asarray([i for i in np.asarray(lanes).tolist() if not self.written[i]], np.int64)
        if lanes.size == 0:
            return
        for model in range(self.backend.num_models):
            todo = [i for i in lanes.tolist() if np.isnan(self.entropy[i, : length[i], model]).any()]
            if not todo:
                continue
            todo_arr = np.asarray(todo, np.int64)
            recs = self.session.score(model, todo_arr, [tokens[i, : length[i]] for i in todo], self.k)
            self.ledger.compute(todo_arr, np.full(len(todo), model), np.maximum(length[todo_arr] - 1, 0))
            for i, rec in zip(todo, recs, strict=True):
                gap = np.isnan(self.entropy[i, : length[i], model])
                self.entropy[i, : length[i], model][gap] = rec.entropy[gap]
                self.token_logprob[i, : length[i], model][gap] = rec.token_logprob[gap]
                if self.k:
                    self.top_ids[i, : length[i], model][gap] = rec.top_ids[gap]
                    self.top_logprobs[i, : length[i], model][gap] = rec.top_logprobs[gap]
        for i in lanes.tolist():
            self._write_lane(i, tokens, emitters, int(length[i]))
            self.written[i] = True
        self.writer.flush()

    def _write_lane(self, i: int, tokens: np.ndarray, emitters: np.ndarray, t: int) -> None:
        """Write lane ``i``'s sequence; a lane with bad signals is skipped and reported, not fatal."""
        from ead_sdk.traces import SequenceTrace

        top_lp = self.top_logprobs[i, :t] if self.k else None
        bad = _first_bad(self.entropy[i, :t], self.token_logprob[i, :t], top_lp)
        if bad is not None:
            pos, model = bad
            name = self.backend.model_names[model]
            self._skip(i, model, pos, f"model {model} ({name!r}) gave a non-finite signal (NaN or inf)")
            return
        seq = SequenceTrace.build(
            prompt_ids=self.request.prompts[i],
            token_ids=tokens[i, :t],
            emitted_by=emitters[i, :t],
            entropy=self.entropy[i, :t],
            token_logprob=self.token_logprob[i, :t],
            top_ids=self.top_ids[i, :t] if self.k else None,
            top_logprobs=top_lp,
            fields={"sequence_id": i},
        )
        try:
            self.writer.write(seq)
        except TraceError as exc:
            self._skip(i, None, None, str(exc))

    def _skip(self, lane: int, model: int | None, position: int | None, reason: str) -> None:
        prompt = tuple(int(v) for v in self.request.prompts[lane])
        text = self.backend.decode(list(prompt))
        shown = repr(text[:80]) if text is not None else str(list(prompt[:20]))
        where = f" at generated position {position}" if position is not None else ""
        skip = SkippedLane(lane, prompt, model, position, f"{reason}{where}")
        self.skipped.append(skip)
        warnings.warn(
            f"lane {lane} not recorded: {skip.reason} (prompt {shown}); the other lanes are written",
            RecordingWarning,
            stacklevel=4,
        )

    def finish(self, cost_model: CostModel) -> CostReport:
        """Close a writer this recorder opened; the teacher-forced scoring's cost."""
        self.close()
        return self.ledger.report(cost_model)

    def close(self) -> None:
        """Flush what was written (and close the writer when this recorder opened it)."""
        if self.owns_writer:
            self.writer.close()
        else:
            self.writer.flush()
