"""The one decode loop: a policy routes each token of each lane between a backend's models.

`generate` runs it to the end and returns the tokens, the emitting models and the cost reports;
`stream` yields ``(lane, token, model)`` events as tokens are emitted. Each step runs, in order:
each routed model computes the position, the policy routes the next one, a retrying escalation's
larger model recomputes it, and the token is emitted. The loop knows nothing of what is behind
the backend: the same code runs two transformers models on a GPU and a recorded trace on numpy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.arrays import Array, as_namespace, to_numpy
from ead_sdk.backend import Backend, BatchSession, DecodeRequest, Draw, LogprobRequest, Sampling
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.decision import decide_checked, init_checked, is_integer_dtype
from ead_sdk.errors import (
    ArgumentTypeError,
    BackendError,
    DecodeStreamError,
    ModelCountError,
    ReplayOnlyPolicyError,
)
from ead_sdk.escalation import rule
from ead_sdk.interface import Policy, Step
from ead_sdk.signal_spec import signal_of
from ead_sdk.signals import topk_entropy_estimate


@dataclass(frozen=True)
class TokenEvent:
    """One emitted token: lane ``lane``'s generated position ``index`` is ``token``, by ``model``."""

    lane: int
    token: int
    model: int
    index: int


@dataclass(frozen=True)
class LaneResult:
    """One lane's generation.

    Attributes:
        prompt: the prompt's token ids.
        tokens: the generated token ids.
        models: the model that emitted each generated token.
        report: the lane's routing cost (every forward, catch-up and wasted retries included).
        finish_reason: ``"stop"`` (end-of-sequence, stop string, end of a trace) or ``"length"``.
        text: the generated text, when the backend has a tokenizer.
    """

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]
    models: tuple[int, ...]
    report: CostReport
    finish_reason: str
    text: str | None = None


@dataclass(frozen=True)
class GenerateResult:
    """Every lane's generation, and the costs summed over the batch.

    Attributes:
        lanes: one `LaneResult` per prompt, in prompt order.
        report: the routing cost of all lanes together.
        cost_model: the per-model costs the reports use.
        recording_cost: the cost of teacher-forced scoring done for a recorded trace, kept apart
            from the routing cost (``None`` when nothing was scored).
        recording_skipped: lanes left out of the recorded trace because their signals were bad
            (`ead_sdk.recording.SkippedLane`: lane, model, position, prompt); each was also warned.
    """

    lanes: tuple[LaneResult, ...]
    report: CostReport
    cost_model: CostModel
    recording_cost: CostReport | None = None
    recording_skipped: tuple[Any, ...] = ()

    def __len__(self) -> int:
        return len(self.lanes)

    def __getitem__(self, lane: int) -> LaneResult:
        return self.lanes[lane]

    def __iter__(self) -> Iterator[LaneResult]:
        return iter(self.lanes)


class DecodeStream:
    """Iterate to receive `TokenEvent`s as they are emitted; `result` then gives the whole run.

    Calling `result` before the end drains the remaining events. Closing the stream early
    (``close()`` or leaving a ``for`` loop with ``break`` and calling it) ends the batch: what a
    recorder had received so far stays readable.
    """

    def __init__(self, loop: _DecodeLoop, run: Iterator[list[TokenEvent] | None]):
        self._loop = loop
        self._run = run
        self._pending: deque[TokenEvent] = deque()

    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        while not self._pending:
            self._pending.extend(next(self._run) or ())
        return self._pending.popleft()

    def result(self) -> GenerateResult:
        """The `GenerateResult`, after running the loop to its end."""
        for _ in self._run:
            pass
        if self._loop.result is None:
            raise DecodeStreamError("the decode stream was closed before it finished")
        return self._loop.result

    def close(self) -> None:
        """Stop decoding now (the backend is closed, a recorder flushed)."""
        self._run.close()  # type: ignore[attr-defined]


def generate(
    backend: Backend,
    policy: Policy,
    prompts: Sequence[Sequence[int] | str] | None = None,
    *,
    max_new_tokens: int | None = None,
    sampling: Sampling | None = None,
    stop: Sequence[str | int] = (),
    logprobs: LogprobRequest = None,
    cost_model: CostModel | None = None,
    record: Any = None,
    record_k: int = 0,
) -> GenerateResult:
    """Decode ``prompts`` with ``policy`` routing every token between ``backend``'s models.

    Args:
        backend: what computes the distributions (`ead_sdk.backends.hf.TransformersBackend`,
            `ead_sdk.backends.trace.TraceBackend`, or your own `ead_sdk.backend.Backend`).
        policy: the routing policy; ``policy.replay_only`` policies are refused.
        prompts: token-id lists, or strings when the backend has a tokenizer; ``None`` for a
            backend with prompts of its own (a trace).
        max_new_tokens: the most tokens per lane (the backend's default when ``None``).
        sampling: how tokens are drawn (greedy by default).
        stop: stop strings (backend with a tokenizer) and stop token ids.
        logprobs: what `Step.logprobs` holds for the policy: top-``k``, ``"full"`` or ``None``. A
            policy whose signal is the top-``k`` estimate (``policy.signal``) sees that estimate
            as `Step.entropy`; its draws carry at least ``k`` log-probabilities.
        cost_model: per-model forward costs (default: the models' parameter counts).
        record: a path (a new trace stream) or a `ead_sdk.traces.TraceWriter`: record the run
            in the trace format as sequences finish. Positions a model did not compute live are
            scored teacher-forced; that cost goes to ``recording_cost``, never to ``report``.
        record_k: top-k log-probabilities recorded per model and position (for a path).

    Returns:
        A `GenerateResult`: per lane ``tokens``, ``models`` and ``report``, plus the total.

    Raises:
        BackendError: empty or malformed prompts, non-finite logits (naming model and lane).
        ModelCountError: a policy that cannot route over the backend's models.
    """
    return _open_stream(
        backend,
        policy,
        prompts,
        events=False,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=stop,
        logprobs=logprobs,
        cost_model=cost_model,
        record=record,
        record_k=record_k,
    ).result()


def stream(
    backend: Backend,
    policy: Policy,
    prompts: Sequence[Sequence[int] | str] | None = None,
    *,
    max_new_tokens: int | None = None,
    sampling: Sampling | None = None,
    stop: Sequence[str | int] = (),
    logprobs: LogprobRequest = None,
    cost_model: CostModel | None = None,
    record: Any = None,
    record_k: int = 0,
) -> DecodeStream:
    """The streaming form of `generate`: a `DecodeStream` of `TokenEvent`s.

    Arguments are checked now; decoding starts with the first ``next``.
    """
    return _open_stream(
        backend,
        policy,
        prompts,
        events=True,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=stop,
        logprobs=logprobs,
        cost_model=cost_model,
        record=record,
        record_k=record_k,
    )


def _open_stream(
    backend: Backend,
    policy: Policy,
    prompts: Sequence[Sequence[int] | str] | None,
    *,
    events: bool,
    max_new_tokens: int | None,
    sampling: Sampling | None,
    stop: Sequence[str | int],
    logprobs: LogprobRequest,
    cost_model: CostModel | None,
    record: Any,
    record_k: int,
) -> DecodeStream:
    if not isinstance(policy, Policy):
        raise ArgumentTypeError(f"policy must be an ead_sdk.Policy, got {type(policy).__name__}")
    if getattr(policy, "replay_only", False):
        raise ReplayOnlyPolicyError(
            f"policy {policy.name!r} reads replay-only look-ahead (Step.future) and cannot decode live"
        )
    policy.check_models(backend.num_models)
    request = DecodeRequest(
        prompts=_prompt_ids(backend, prompts),
        max_new_tokens=_max_new_tokens(backend, max_new_tokens),
        sampling=sampling if sampling is not None else Sampling(),
        logprobs=_signal_logprobs(backend, policy, _logprob_request(logprobs, backend.vocab_size)),
        stop=_stops(stop),
        keep_rows=record is not None,
    )
    if cost_model is None:
        cost_model = CostModel.from_param_counts(backend.param_counts, backend.model_names)
    else:
        cost_model.check_models(backend.num_models, "backend")
    recorder = None
    if record is not None:
        from ead_sdk.recording import LiveRecorder

        recorder = LiveRecorder.open(record, backend, policy, request, k=record_k)
    loop = _DecodeLoop(backend, policy, request, cost_model, recorder)
    return DecodeStream(loop, loop.run(events=events))


# -- argument checks ----------------------------------------------------------------------
def _prompt_ids(backend: Backend, prompts: Sequence[Sequence[int] | str] | None) -> tuple[tuple[int, ...], ...]:
    if prompts is None:
        prompts = backend.default_prompts()
        if prompts is None:
            raise BackendError("prompts are required for this backend")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise BackendError("prompts must be a list of prompts (token-id lists or strings)")
    if len(prompts) == 0:
        raise BackendError("prompts must not be empty: give at least one prompt")
    out = []
    vocab = backend.vocab_size
    for i, prompt in enumerate(prompts):
        ids = _token_ids(i, backend.encode(prompt) if isinstance(prompt, str) else prompt)
        if not ids:
            raise BackendError(f"prompt {i} is empty: a prompt needs at least one token")
        bad = [v for v in ids if not 0 <= v < vocab]
        if bad:
            raise BackendError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab})")
        out.append(ids)
    return tuple(out)


def _token_ids(i: int, ids: Any) -> tuple[int, ...]:
    """Prompt ``i``'s token ids as Python ints: integers only (a float or a bool is refused, never floored)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise BackendError(f"prompt {i} is neither a string nor a list of token ids")
    dtype = getattr(ids, "dtype", None)
    if dtype is not None and not is_integer_dtype(dtype):  # an array: its dtype says it all
        raise BackendError(f"prompt {i}: token ids must be integers, got an array of {dtype}")
    values = ids.reshape(-1).tolist() if hasattr(ids, "reshape") else list(ids)
    for j, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise BackendError(
                f"prompt {i}, position {j}: token ids must be integers, got {type(v).__name__} {v!r:.40}"
            )
    return tuple(int(v) for v in values)


MAX_NEW_TOKENS = 1 << 20
"""The most tokens one lane may be asked for (far beyond any model's context)."""


def _max_new_tokens(backend: Backend, value: int | None) -> int:
    value = backend.default_max_new_tokens() if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_NEW_TOKENS:
        raise BackendError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {value!r:.40}")
    return int(value)


def _logprob_request(value: LogprobRequest, vocab: int) -> LogprobRequest:
    if value is None or value == "full":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= vocab:
        raise BackendError(f"logprobs must be None, 'full' or an integer in [1, {vocab}], got {value!r}")
    return int(value)


def _signal_logprobs(backend: Backend, policy: Policy, logprobs: LogprobRequest) -> LogprobRequest:
    """What the draws must carry for the policy's signal: a top-k signal needs at least its k."""
    signal = signal_of(policy)
    if signal.exact:
        return logprobs
    signal.require(exact=True, max_k=backend.max_logprobs, where=f"the backend {type(backend).__name__}")
    if logprobs == "full":  # sorted descending: the first k columns are the top-k
        return logprobs
    return max(int(logprobs or 0), int(signal.k))  # type: ignore[arg-type]


def _stops(stop: Sequence[str | int]) -> tuple[str | int, ...]:
    if isinstance(stop, (str, int)):
        stop = (stop,)
    out: list[str | int] = []
    for s in stop:
        if isinstance(s, str) and s:
            out.append(s)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s < 2**63:
            out.append(int(s))
        else:
            raise BackendError(f"stop entries must be non-empty strings or token ids, got {s!r}")
    return tuple(out)


# -- the loop -----------------------------------------------------------------------------
def _scatter(xp: Any, device: Any, n: int, parts: list[tuple[np.ndarray, Array | None]]) -> Array | None:
    """Per-lane rows from per-model parts: one part covering every lane is returned as is."""
    if parts[0][1] is None:
        return None
    if len(parts) == 1 and parts[0][0].size == n:
        return parts[0][1]
    first = parts[0][1]
    kw = {"device": device} if device is not None else {}
    out = xp.zeros((n, *first.shape[1:]), dtype=first.dtype, **kw)
    for lanes, rows in parts:
        out[xp.asarray(lanes, **kw)] = rows
    return out


def _check_finite(backend: Backend, bad: np.ndarray, lanes: np.ndarray, models: np.ndarray, t: int) -> None:
    hit = lanes[bad[lanes] != 0]
    if hit.size:
        lane = int(hit[0])
        m = int(models[lane])
        raise BackendError(
            f"model {m} ({backend.model_names[m]!r}) produced non-finite logits (NaN or +inf) "
            f"for lane {lane} at generated position {t}"
        )


def _events(t: int, active: np.ndarray, host_tokens: np.ndarray, emitter: np.ndarray) -> list[TokenEvent]:
    lanes, toks, models = active.tolist(), host_tokens[active].tolist(), emitter[active].tolist()
    return [TokenEvent(i, tok, m, t) for i, tok, m in zip(lanes, toks, models, strict=True)]


class _DecodeLoop:
    """One batch through the loop: the lanes' tokens, emitters, routes and the policy's state.

    `run` follows the decode step of `ead_sdk.decode` in order: `_compute` (each routed model
    computes position ``t``), `_decide` (the policy routes position ``t + 1``; the step's one host
    sync), `_retry` (a retrying escalation's larger model recomputes position ``t``) and `_emit`.
    """

    def __init__(self, backend: Backend, policy: Policy, request: DecodeRequest, cost_model: CostModel, recorder: Any):
        self.backend, self.policy, self.request = backend, policy, request
        self.cost_model, self.recorder = cost_model, recorder
        n = request.n
        self.xp, self.device = as_namespace(backend.xp), backend.device
        self.kw = {"device": self.device} if self.device is not None else {}
        self.ledger = CostLedger(n, backend.num_models, np.array([len(p) for p in request.prompts], np.int64))
        self.tokens = np.zeros((n, request.max_new_tokens), np.int64)
        self.emitters = np.zeros((n, request.max_new_tokens), np.int64)
        self.length = np.zeros(n, np.int64)
        self.finish = ["length"] * n
        self.live = np.ones(n, bool)
        self.routes = np.full(n, policy.initial_model, np.int64)
        self.state = init_checked(policy, n, self.xp, self.device)
        self.escalation = rule(policy.escalation)
        self.signal_k = signal_of(policy).k  # None: the exact entropy
        self.result: GenerateResult | None = None
        limits = backend.lane_limits(request)
        if limits is not None:
            self.live &= np.asarray(limits) > 0
            self.finish = ["stop" if not ok else "length" for ok in self.live]

    def run(self, *, events: bool) -> Iterator[list[TokenEvent] | None]:
        """Decode position by position, yielding each position's events (or ``None``)."""
        session = self.backend.start(self.request)
        try:
            if self.recorder is not None:
                self.recorder.begin(self.request, session)
            for t in range(self.request.max_new_tokens):
                active = np.flatnonzero(self.live)
                if active.size == 0:
                    break
                draws, step = self._compute(session, t, active)
                host_routes, host_tokens = self._decide(t, active, step)
                emitter = self.routes.copy()
                computed = [(m, lanes) for m, lanes, _ in draws]
                drawn = self._retry(session, t, active, host_routes, step.token, host_tokens, emitter, computed)
                self._emit(session, t, active, drawn, host_tokens, emitter, computed)
                self.routes[active] = self.escalation.next_model(host_routes[active], self.routes[active])
                yield _events(t, active, host_tokens, emitter) if events else None
            self.result = self._finish()
        finally:
            if self.recorder is not None:  # interrupted: the sequences completed so far stay readable
                self.recorder.close()
            session.close()

    def _compute(self, session: BatchSession, t: int, active: np.ndarray) -> tuple[list, Step]:
        """Steps 1-2: each routed model catches up and computes position ``t`` for its lanes."""
        xp, device, n = self.xp, self.device, self.request.n
        draws: list[tuple[int, np.ndarray, Draw]] = []
        for m in np.unique(self.routes[active]).tolist():
            lanes = active[self.routes[active] == m]
            draws.append((m, lanes, session.forward(m, lanes, t)))
            self.ledger.forward_pass(lanes, m, t)
        entropy = _scatter(xp, device, n, [(ln, d.entropy) for _, ln, d in draws])
        logprobs = _scatter(xp, device, n, [(ln, d.logprobs) for _, ln, d in draws])
        if self.signal_k is not None:  # the top-k estimate; a NaN entropy (bad logits) stays NaN
            estimate = topk_entropy_estimate(logprobs[:, : self.signal_k], self.backend.vocab_size, validate=False)
            entropy = xp.where(xp.isnan(entropy), entropy, xp.astype(estimate, entropy.dtype))
        step = Step(
            entropy=entropy,
            model=xp.asarray(self.routes, **self.kw),
            index=xp.full((n,), t, dtype=xp.int64, **self.kw),
            live=xp.asarray(self.live, **self.kw),
            logprobs=logprobs,
            token_ids=_scatter(xp, device, n, [(ln, d.token_ids) for _, ln, d in draws]),
            token=_scatter(xp, device, n, [(ln, d.token) for _, ln, d in draws]),
            vocab_size=self.backend.vocab_size,
        )
        return draws, step

    def _decide(self, t: int, active: np.ndarray, step: Step) -> tuple[np.ndarray, np.ndarray]:
        """Step 3: the policy picks the model of position ``t + 1``; routes and tokens on the host."""
        xp, kw = self.xp, self.kw
        next_routes, self.state = decide_checked(self.policy, self.state, step, self.request.n, t)
        # The one host sync of a step: routes, drawn tokens and non-finite flags together.
        packed = xp.stack(
            [
                xp.astype(xp.asarray(next_routes, **kw), xp.int64),
                xp.astype(step.token, xp.int64),
                xp.astype(xp.isnan(step.entropy), xp.int64),
            ]
        )
        host_routes, host_tokens, bad = to_numpy(packed)
        _check_finite(self.backend, bad, active, self.routes, t)
        num_models = self.backend.num_models
        nxt = host_routes[active]
        if np.any((nxt < 0) | (nxt >= num_models)):
            lane = int(active[np.flatnonzero((nxt < 0) | (nxt >= num_models))[0]])
            raise ModelCountError(
                f"policy {self.policy.name!r} routed lane {lane} to model {int(host_routes[lane])}, "
                f"not one of {num_models} models"
            )
        return host_routes, host_tokens

    def _retry(
        self,
        session: BatchSession,
        t: int,
        active: np.ndarray,
        host_routes: np.ndarray,
        drawn: Array,
        host_tokens: np.ndarray,
        emitter: np.ndarray,
        computed: list[tuple[int, np.ndarray]],
    ) -> Array:
        """Step 4: under a retrying escalation the larger model recomputes position ``t`` and its draw is emitted."""
        if not self.escalation.retries:
            return drawn
        xp, kw, n, routes = self.xp, self.kw, self.request.n, self.routes
        up = active[self.escalation.retried(host_routes[active], routes[active])]
        for r in np.unique(host_routes[up]).tolist():
            lanes = up[host_routes[up] == r]
            draw = session.forward(r, lanes, t)
            self.ledger.forward_pass(lanes, r, t)
            self.ledger.waste(lanes, routes[lanes])
            # A second sync, only on steps with a retry.
            extra = to_numpy(xp.stack([xp.astype(draw.token, xp.int64), xp.astype(xp.isnan(draw.entropy), xp.int64)]))
            bad_retry = np.zeros(n, np.int64)
            bad_retry[lanes] = extra[1]
            _check_finite(self.backend, bad_retry, lanes, np.full(n, r), t)
            drawn = xp.asarray(drawn, copy=True)
            drawn[xp.asarray(lanes, **kw)] = xp.astype(draw.token, drawn.dtype)
            host_tokens[lanes] = extra[0]
            emitter[lanes] = r
            computed.append((r, lanes))
        return drawn

    def _emit(
        self,
        session: BatchSession,
        t: int,
        active: np.ndarray,
        drawn: Array,
        host_tokens: np.ndarray,
        emitter: np.ndarray,
        computed: list[tuple[int, np.ndarray]],
    ) -> None:
        """Step 5: emit; lanes stop at their end, a stop sequence, or the token limit."""
        self.ledger.emit(active, emitter[active])
        session.append(t, drawn, active)
        self.tokens[active, t] = host_tokens[active]
        self.emitters[active, t] = emitter[active]
        self.length[active] += 1
        if self.recorder is not None:
            self.recorder.step(t, computed, host_tokens)
        done = session.finished(t, active, host_tokens[active])
        for lane in active[done].tolist():
            self.finish[lane] = "stop"
        self.live[active[done]] = False
        if self.recorder is not None and done.any():
            self.recorder.lanes_done(active[done], self.tokens, self.emitters, self.length)

    def _finish(self) -> GenerateResult:
        """Every lane's result and the batch's reports; a recorder writes what is left and closes."""
        lanes_out = []
        for i in range(self.request.n):
            gen = self.tokens[i, : self.length[i]]
            lanes_out.append(
                LaneResult(
                    prompt=self.request.prompts[i],
                    tokens=tuple(int(v) for v in gen),
                    models=tuple(int(v) for v in self.emitters[i, : self.length[i]]),
                    report=self.ledger.report(self.cost_model, np.array([i])),
                    finish_reason=self.finish[i],
                    text=self.backend.decode(gen.tolist()),
                )
            )
        recording_cost, skipped = None, ()
        if self.recorder is not None:
            self.recorder.lanes_done(np.arange(self.request.n), self.tokens, self.emitters, self.length)
            recording_cost, skipped = self.recorder.finish(self.cost_model), tuple(self.recorder.skipped)
            self.recorder = None
        return GenerateResult(
            lanes=tuple(lanes_out),
            report=self.ledger.report(self.cost_model),
            cost_model=self.cost_model,
            recording_cost=recording_cost,
            recording_skipped=skipped,
        )
