"""The one decode loop: a policy routes each token of each lane between a backend's models.

`generate` runs it to the end and returns the tokens, the emitting models and the cost reports;
`stream` yields ``(lane, token, model)`` events as tokens are emitted. The loop follows
DESIGN.md's "One decode step, in order" and knows nothing of what is behind the backend: the
same code runs two transformers models on a GPU and a recorded trace on numpy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.arrays import Array, as_namespace, to_numpy
from ead_sdk.backend import Backend, DecodeRequest, Draw, LogprobRequest, Sampling
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.decision import decide_checked, init_checked, is_integer_dtype
from ead_sdk.errors import BackendError, EadError, ModelCountError
from ead_sdk.interface import RETRYING, Policy, Step


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

    def __init__(self, run: Iterator[list[TokenEvent] | None], box: dict[str, Any]):
        self._run = run
        self._box = box
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
        if "result" not in self._box:
            raise EadError("the decode stream was closed before it finished")
        return self._box["result"]

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
        logprobs: what `Step.logprobs` holds for the policy: top-``k``, ``"full"`` or ``None``.
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
    return _start(
        False,
        backend,
        policy,
        prompts,
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
    return _start(
        True,
        backend,
        policy,
        prompts,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=stop,
        logprobs=logprobs,
        cost_model=cost_model,
        record=record,
        record_k=record_k,
    )


def _start(
    events: bool,
    backend: Backend,
    policy: Policy,
    prompts: Sequence[Sequence[int] | str] | None,
    *,
    max_new_tokens: int | None,
    sampling: Sampling | None,
    stop: Sequence[str | int],
    logprobs: LogprobRequest,
    cost_model: CostModel | None,
    record: Any,
    record_k: int,
) -> DecodeStream:
    if not isinstance(policy, Policy):
        raise EadError(f"policy must be an ead_sdk.Policy, got {type(policy).__name__}")
    if getattr(policy, "replay_only", False):
        raise ModelCountError(
            f"policy {policy.name!r} reads replay-only look-ahead (Step.future) and cannot decode live"
        )
    policy.check_models(backend.num_models)
    request = DecodeRequest(
        prompts=_prompt_ids(backend, prompts),
        max_new_tokens=_max_new_tokens(backend, max_new_tokens),
        sampling=sampling if sampling is not None else Sampling(),
        logprobs=_logprob_request(logprobs, backend.vocab_size),
        stop=_stops(stop),
        keep_rows=record is not None,
    )
    if cost_model is None:
        cost_model = CostModel.from_param_counts(backend.param_counts, backend.model_names)
    elif cost_model.num_models != backend.num_models:
        raise EadError(f"cost model has {cost_model.num_models} models, backend has {backend.num_models}")
    recorder = None
    if record is not None:
        from ead_sdk.recording import LiveRecorder

        recorder = LiveRecorder.open(record, backend, policy, request, k=record_k)
    box: dict[str, Any] = {}
    return DecodeStream(_run(backend, policy, request, cost_model, recorder, box, events), box)


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


def _run(
    backend: Backend,
    policy: Policy,
    request: DecodeRequest,
    cost_model: CostModel,
    recorder: Any,
    box: dict[str, Any],
    events: bool,
) -> Iterator[list[TokenEvent] | None]:
    n, num_models = request.n, backend.num_models
    xp, device = as_namespace(backend.xp), backend.device
    kw = {"device": device} if device is not None else {}
    prompt_lengths = np.array([len(p) for p in request.prompts], np.int64)
    ledger = CostLedger(n, num_models, prompt_lengths)
    tokens = np.zeros((n, request.max_new_tokens), np.int64)
    emitters = np.zeros((n, request.max_new_tokens), np.int64)
    length = np.zeros(n, np.int64)
    finish = ["length"] * n
    live = np.ones(n, bool)
    routes = np.full(n, policy.initial_model, np.int64)
    state = init_checked(policy, n, xp, device)
    retry_mode = policy.escalation in RETRYING
    # retry_token: an escalation re-emits one token; the next position stays with the escalating model.
    token_only = policy.escalation == "retry_token"
    limits = backend.lane_limits(request)
    if limits is not None:
        live &= np.asarray(limits) > 0
        finish = ["stop" if not ok else "length" for ok in live]
    backend.start(request)
    try:
        if recorder is not None:
            recorder.begin(request)
        for t in range(request.max_new_tokens):
            active = np.flatnonzero(live)
            if active.size == 0:
                break
            # 1-2. each routed model catches up and computes position t for its lanes.
            draws: list[tuple[int, np.ndarray, Draw]] = []
            for m in np.unique(routes[active]).tolist():
                lanes = active[routes[active] == m]
                draws.append((m, lanes, backend.forward(m, lanes, t)))
                ledger.forward_pass(lanes, m, t)
            entropy = _scatter(xp, device, n, [(ln, d.entropy) for _, ln, d in draws])
            drawn = _scatter(xp, device, n, [(ln, d.token) for _, ln, d in draws])
            step = Step(
                entropy=entropy,
                model=xp.asarray(routes, **kw),
                index=xp.full((n,), t, dtype=xp.int64, **kw),
                live=xp.asarray(live, **kw),
                logprobs=_scatter(xp, device, n, [(ln, d.logprobs) for _, ln, d in draws]),
                token_ids=_scatter(xp, device, n, [(ln, d.token_ids) for _, ln, d in draws]),
                token=drawn,
                vocab_size=backend.vocab_size,
            )
            # 3. the policy picks the model of position t + 1.
            next_routes, state = decide_checked(policy, state, step, n, t)
            # The one host sync of a step: routes, drawn tokens and non-finite flags together.
            packed = xp.stack(
                [
                    xp.astype(xp.asarray(next_routes, **kw), xp.int64),
                    xp.astype(drawn, xp.int64),
                    xp.astype(xp.isnan(entropy), xp.int64),
                ]
            )
            host_routes, host_tokens, bad = to_numpy(packed)
            _check_finite(backend, bad, active, routes, t)
            nxt = host_routes[active]
            if np.any((nxt < 0) | (nxt >= num_models)):
                lane = int(active[np.flatnonzero((nxt < 0) | (nxt >= num_models))[0]])
                raise ModelCountError(
                    f"policy {policy.name!r} routed lane {lane} to model {int(host_routes[lane])}, "
                    f"not one of {num_models} models"
                )
            emitter = routes.copy()
            computed = [(m, lanes) for m, lanes, _ in draws]
            # 4. escalation "retry"/"retry_token": the larger model recomputes position t; its draw is emitted.
            if retry_mode:
                up = active[host_routes[active] > routes[active]]
                for r in np.unique(host_routes[up]).tolist():
                    lanes = up[host_routes[up] == r]
                    draw = backend.forward(r, lanes, t)
                    ledger.forward_pass(lanes, r, t)
                    ledger.waste(lanes, routes[lanes])
                    # A second sync, only on steps with a retry.
                    extra = to_numpy(
                        xp.stack([xp.astype(draw.token, xp.int64), xp.astype(xp.isnan(draw.entropy), xp.int64)])
                    )
                    bad_retry = np.zeros(n, np.int64)
                    bad_retry[lanes] = extra[1]
                    _check_finite(backend, bad_retry, lanes, np.full(n, r), t)
                    drawn = xp.asarray(drawn, copy=True)
                    drawn[xp.asarray(lanes, **kw)] = xp.astype(draw.token, drawn.dtype)
                    host_tokens[lanes] = extra[0]
                    emitter[lanes] = r
                    computed.append((r, lanes))
            # 5. emit; lanes stop at their end, a stop sequence, or the token limit.
            ledger.emit(active, emitter[active])
            backend.append(t, drawn, active)
            tokens[active, t] = host_tokens[active]
            emitters[active, t] = emitter[active]
            length[active] += 1
            if recorder is not None:
                recorder.step(t, computed, host_tokens)
            done = backend.finished(t, active, host_tokens[active])
            for lane in active[done].tolist():
                finish[lane] = "stop"
            live[active[done]] = False
            if recorder is not None and done.any():
                recorder.lanes_done(active[done], tokens, emitters, length)
            routes[active] = np.minimum(host_routes[active], routes[active]) if token_only else host_routes[active]
            if events:
                yield [
                    TokenEvent(i, tok, m, t)
                    for i, tok, m in zip(
                        active.tolist(), host_tokens[active].tolist(), emitter[active].tolist(), strict=True
                    )
                ]
            else:
                yield None
        lanes_out = []
        for i in range(n):
            gen = tokens[i, : length[i]]
            lanes_out.append(
                LaneResult(
                    prompt=request.prompts[i],
                    tokens=tuple(int(v) for v in gen),
                    models=tuple(int(v) for v in emitters[i, : length[i]]),
                    report=ledger.report(cost_model, np.array([i])),
                    finish_reason=finish[i],
                    text=backend.decode(gen.tolist()),
                )
            )
        recording_cost, skipped = None, ()
        if recorder is not None:
            recorder.lanes_done(np.arange(n), tokens, emitters, length)
            recording_cost, skipped = recorder.finish(cost_model), tuple(recorder.skipped)
            recorder = None
        box["result"] = GenerateResult(
            lanes=tuple(lanes_out),
            report=ledger.report(cost_model),
            cost_model=cost_model,
            recording_cost=recording_cost,
            recording_skipped=skipped,
        )
    finally:
        if recorder is not None:  # interrupted: the sequences completed so far stay readable
            recorder.close()
        backend.close()
