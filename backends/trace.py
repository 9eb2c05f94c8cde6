"""`TraceBackend`: a recorded trace served through the backend contract, on numpy.

The decode loop runs unchanged on a trace: each lane is one recorded sequence, a model asked for
position ``t`` answers with the signals it was recorded with there, and the token emitted is
always the trajectory's token, whichever model is routed (the trace is a fixed, teacher-forced
path: routing changes who pays, not what is written). It is the slow, exact reference for the
vectorised replay in `ead_sdk.simulators`, and fills `Step` the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ead_sdk.backend import Backend, BatchSession, DecodeRequest, Draw, RowRecord
from ead_sdk.errors import BackendError
from ead_sdk.traces.schema import SequenceTrace, TraceMeta


class TraceBackend(Backend):
    """Serve recorded sequences' per-model signals along their trajectories.

    Args:
        traces: a `ead_sdk.traces.TraceSet`, a path to a trace file, or a sequence of
            `SequenceTrace` (then ``meta`` is required).
        meta: the trace metadata, when ``traces`` is a plain sequence.

    `Step.logprobs`/`Step.token_ids` carry the recorded top-k (all ``k`` of them unless a
    smaller ``logprobs`` is requested); ``logprobs="full"`` is refused: a trace has no full rows.
    Lanes end at the end of their trajectory (or at ``max_new_tokens``).
    """

    def __init__(self, traces: Any, meta: TraceMeta | None = None):
        if isinstance(traces, (str, os.PathLike)):
            from ead_sdk.traces.reader import read_traces

            traces = read_traces(traces)
        if hasattr(traces, "meta") and hasattr(traces, "sequences"):
            meta = traces.meta if meta is None else meta
            sequences = list(traces.sequences())
        elif isinstance(traces, Sequence):
            sequences = list(traces)
        else:
            raise BackendError(
                f"TraceBackend needs a TraceSet, a trace path or SequenceTraces, got {type(traces).__name__}"
            )
        if meta is None:
            raise BackendError("TraceBackend: pass the trace's TraceMeta with a plain list of sequences")
        if not sequences:
            raise BackendError("TraceBackend: the trace has no sequences")
        for i, seq in enumerate(sequences):
            if not isinstance(seq, SequenceTrace):
                raise BackendError(f"TraceBackend: sequence {i} is a {type(seq).__name__}, not a SequenceTrace")
            if seq.num_models != meta.num_models:
                raise BackendError(
                    f"TraceBackend: sequence {i} has signals for {seq.num_models} models, "
                    f"the metadata names {meta.num_models}"
                )
        self.meta = meta
        self.sequences = sequences

    # -- description ----------------------------------------------------------------------
    @property
    def num_models(self) -> int:
        return self.meta.num_models

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.meta.model_names

    @property
    def param_counts(self) -> tuple[int, ...]:
        return self.meta.param_counts

    @property
    def vocab_size(self) -> int:
        return int(self.meta.vocab_size)

    @property
    def xp(self) -> Any:
        return np

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.meta.tokenizer_fingerprint

    @property
    def max_logprobs(self) -> int:
        """The trace's recorded ``k``."""
        return int(self.meta.k)

    def default_prompts(self) -> list[list[int]]:
        return [seq.prompt_ids.tolist() for seq in self.sequences]

    def default_max_new_tokens(self) -> int:
        return max(1, max(seq.length for seq in self.sequences))

    def lane_limits(self, request: DecodeRequest) -> np.ndarray:
        return np.array([seq.length for seq in self._match(request)], np.int64)

    # -- one batch ------------------------------------------------------------------------
    def _match(self, request: DecodeRequest) -> list[SequenceTrace]:
        if request.n != len(self.sequences):
            raise BackendError(
                f"TraceBackend: {request.n} prompts for a trace of {len(self.sequences)} sequences "
                "(pass prompts=None to decode every sequence)"
            )
        for i, (prompt, seq) in enumerate(zip(request.prompts, self.sequences, strict=True)):
            if tuple(int(v) for v in seq.prompt_ids) != prompt:
                raise BackendError(f"TraceBackend: prompt {i} is not the prompt of trace sequence {i}")
        return self.sequences

    def start(self, request: DecodeRequest) -> TraceSession:
        if request.logprobs == "full":
            raise BackendError("TraceBackend: a trace records top-k log-probabilities only, not full rows")
        k = int(self.meta.k)
        if request.logprobs is not None and (k == 0 or request.logprobs > k):
            raise BackendError(f"TraceBackend: {request.logprobs} logprobs requested, the trace recorded k={k}")
        return TraceSession(self.meta, self._match(request), request)


class TraceSession(BatchSession):
    """One batch of trace sequences served along their trajectories (see `TraceBackend`)."""

    def __init__(self, meta: TraceMeta, lanes: list[SequenceTrace], request: DecodeRequest):
        self.meta = meta
        self._lanes = lanes
        self._request: DecodeRequest | None = request
        self._last: dict[int, tuple[np.ndarray, int]] = {}
        # Lane-major padded copies, so a forward is one fancy index.
        n, m, k = len(lanes), meta.num_models, int(meta.k)
        t_max = max(1, max(s.length for s in lanes))
        self._lengths = np.array([s.length for s in lanes], np.int64)
        self._entropy = np.zeros((n, t_max, m), np.float32)
        self._tokens = np.zeros((n, t_max), np.int64)
        have_top = k > 0 and all(s.top_logprobs is not None for s in lanes)
        self._top_lp = np.zeros((n, t_max, m, k), np.float32) if have_top else None
        self._top_ids = np.zeros((n, t_max, m, k), np.int64) if have_top else None
        for i, s in enumerate(lanes):
            t = s.length
            self._entropy[i, :t] = s.entropy
            self._tokens[i, :t] = s.token_ids
            if have_top:
                self._top_lp[i, :t] = s.top_logprobs
                self._top_ids[i, :t] = s.top_ids

    def forward(self, model: int, lanes: np.ndarray, position: int) -> Draw:
        if self._request is None:
            raise BackendError("TraceBackend: this batch session is closed")
        if np.any(position >= self._lengths[lanes]):
            raise BackendError(f"TraceBackend: position {position} is past the end of a trajectory")
        self._last[model] = (np.asarray(lanes, np.int64), position)
        entropy = self._entropy[lanes, position, model]
        token = self._tokens[lanes, position]
        if self._top_lp is None:
            return Draw(entropy=entropy, token=token)
        k = int(self._request.logprobs or self.meta.k)
        return Draw(
            entropy=entropy,
            token=token,
            logprobs=self._top_lp[lanes, position, model, :k],
            token_ids=self._top_ids[lanes, position, model, :k],
        )

    def append(self, position: int, tokens: Any, lanes: np.ndarray) -> None:
        """Nothing to do: the trajectory is already known."""

    def finished(self, position: int, lanes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return position + 1 >= self._lengths[lanes]

    def record_rows(self, model: int, lanes: np.ndarray, tokens: np.ndarray, k: int) -> RowRecord:
        _, position = self._last[model]
        return _rows(self.meta, [self._lanes[i] for i in lanes.tolist()], model, np.array([position]), k)

    def score(self, model: int, lanes: np.ndarray, generated: Sequence[np.ndarray], k: int) -> list[RowRecord]:
        out = []
        for lane, gen in zip(lanes.tolist(), generated, strict=True):
            out.append(_rows(self.meta, [self._lanes[lane]], model, np.arange(len(gen)), k, per_position=True))
        return out

    def close(self) -> None:
        self._request = None
        self._last = {}


def _rows(
    meta: TraceMeta, seqs: list[SequenceTrace], model: int, positions: np.ndarray, k: int, per_position: bool = False
) -> RowRecord:
    """Recorded values of ``model``: one row per sequence at ``positions[0]``, or per position."""
    if per_position:
        (s,) = seqs
        pick = [(s, int(t)) for t in positions]
    else:
        pick = [(s, int(positions[0])) for s in seqs]
    entropy = np.array([s.entropy[t, model] for s, t in pick], np.float32)
    token_lp = np.array([s.token_logprob[t, model] for s, t in pick], np.float32)
    if not k:
        return RowRecord(entropy, token_lp)
    if k > meta.k or any(s.top_ids is None for s, _ in pick):
        raise BackendError(f"TraceBackend: top-{k} requested, the trace recorded k={meta.k}")
    top_ids = np.array([s.top_ids[t, model, :k] for s, t in pick], np.int32).reshape(len(pick), k)
    top_lp = np.array([s.top_logprobs[t, model, :k] for s, t in pick], np.float32).reshape(len(pick), k)
    return RowRecord(entropy, token_lp, top_ids, top_lp)
