"""Timing a backend's forward passes on this hardware: the measured cost model.

The parameter-count cost model answers "how much compute" (the EAD paper's measure). Wall-clock
is another question: a catch-up of many tokens runs as one pass and costs far less than as many
decode steps, and small models pay a fixed per-pass overhead that parameter counts ignore. This
module times each model's pass as a function of the tokens it consumes, through the generic
`Backend` API, so any backend can be measured where it runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ead_sdk.arrays import to_numpy
from ead_sdk.backend import Backend, DecodeRequest
from ead_sdk.cost import CostModel
from ead_sdk.errors import CostModelError

DEFAULT_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16)
"""Tokens per timed pass: 1 is a decode step; more is a catch-up of ``width - 1`` tokens plus the step."""


@dataclass(frozen=True)
class ForwardTimings:
    """Measured pass times of each model: ``seconds[m][i]`` is the median ``widths[i]``-token pass.

    Attributes:
        names: the models, smallest first.
        batch: lanes in each timed pass.
        widths: tokens per pass that were timed.
        seconds: per model, per width, the median of the timed passes (seconds).
        step: time of a decode step (a 1-token pass) per model.
        catchup_pass: fitted fixed time of a wider pass per model (its intercept at ``w - 1 = 0``).
        per_token: fitted time of each further token of a wider pass per model (its slope).
        samples: timed passes per model and width.
        notes: the settings, and ``step_overhead`` (seconds per decode step outside the
            forwards, when measured with a policy).
    """

    names: tuple[str, ...]
    batch: int
    widths: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]
    step: tuple[float, ...]
    catchup_pass: tuple[float, ...]
    per_token: tuple[float, ...]
    samples: int
    notes: dict[str, Any] = field(default_factory=dict)

    def cost_model(self) -> CostModel:
        """The `CostModel` in seconds: ``costs`` = a decode step, ``catchup_costs`` = each further token."""
        return CostModel(
            self.step,
            "seconds",
            self.names,
            self.per_token,
            step_overhead=self.notes.get("step_overhead", 0.0),
            catchup_pass_costs=self.catchup_pass,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form, with the fitted cost model under ``"cost_model"``."""
        return {
            "names": list(self.names),
            "batch": self.batch,
            "widths": list(self.widths),
            "seconds": [list(s) for s in self.seconds],
            "step": list(self.step),
            "catchup_pass": list(self.catchup_pass),
            "per_token": list(self.per_token),
            "samples": self.samples,
            "notes": self.notes,
            "cost_model": self.cost_model().as_dict(),
        }


def _fit(widths: Sequence[int], seconds: Sequence[float]) -> tuple[float, float, float]:
    """``(step, pass, per_token)``: the 1-token pass as measured; a line through the wider passes.

    A pass of ``w > 1`` tokens is fitted as ``pass + (w - 1) * per_token`` (least squares). The
    two are kept apart because on a CPU the first extra token costs far more than the next ones
    (a one-token pass multiplies vectors, a wider one matrices).
    """
    x = np.asarray(widths, float) - 1.0
    y = np.asarray(seconds, float)
    step = float(y[x == 0].min()) if np.any(x == 0) else float(y.min())
    wide = x > 0
    if np.count_nonzero(wide) < 2 or np.ptp(x[wide]) == 0:
        per = float(((y[wide] - step) / x[wide]).mean()) if np.any(wide) else step
        return step, step, max(per, 0.0)
    slope, intercept = np.polyfit(x[wide], y[wide], 1)
    slope = max(float(slope), 0.0)
    base = float(intercept) if intercept > 0 else float(y[wide].min())
    return step, base, slope


def _time_model(
    backend: Backend, model: int, prompts: np.ndarray, order: Sequence[int], times: dict, logprobs: int | None
) -> None:
    """Run one batch on ``model`` alone, letting it miss ``w - 1`` tokens before each timed ``w``-token pass."""
    lanes = np.arange(prompts.shape[0])
    total = 1 + sum(order)
    rows = tuple(tuple(int(v) for v in p) for p in prompts)
    session = backend.start(DecodeRequest(prompts=rows, max_new_tokens=total, logprobs=logprobs))
    try:
        draw = session.forward(model, lanes, 0)  # the prefill pass, not timed
        to_numpy(draw.token)
        session.append(0, draw.token, lanes)
        pos = 1
        for w in order:
            for _ in range(w - 1):  # tokens this model misses, as while another model emits
                session.append(pos, draw.token, lanes)
                pos += 1
            start = time.perf_counter()
            draw = session.forward(model, lanes, pos)
            to_numpy(draw.token)  # the decode loop's host sync: the pass has finished
            times[w].append(time.perf_counter() - start)
            session.append(pos, draw.token, lanes)
            pos += 1
    finally:
        session.close()


def measure_forward_times(
    backend: Backend,
    *,
    batch: int = 1,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    prompt_len: int = 16,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    policy: Any = None,
    overhead_tokens: int = 32,
    logprobs: int | None = None,
) -> ForwardTimings:
    """Time each model's decode step and catch-up pass on ``backend``, as the live decoder runs them.

    For each model and round, one batch of ``batch`` random prompts of ``prompt_len`` tokens is
    decoded by that model alone, with gaps: before a timed pass of ``w`` tokens it misses ``w - 1``
    tokens, so the pass is a catch-up of ``w - 1`` tokens plus the step, on a cache that grows as in
    a real run. Each round times every width once (a fresh batch, so the context stays as short as
    a run's); ``repeats`` rounds after ``warmup`` untimed ones, models interleaved round by round so
    that load drifts hit all alike; the median is kept (a run is a sum of typical passes, not of the
    luckiest ones).
    `ForwardTimings.cost_model` turns the table into a `CostModel` (see `_fit`).

    Args:
        backend: any `Backend` (its models are run here; nothing else is changed).
        batch: lanes per pass (time a batch size you decode with).
        widths: tokens per timed pass (1 = a decode step).
        prompt_len: tokens of each random prompt.
        repeats: timed passes per model and width.
        warmup: untimed rounds first (allocations, lazy initialisation).
        seed: the prompts' seed.
        policy: when given, also time the decode loop's per-step work outside the forwards
            (this policy's ``decide``, bookkeeping, host sync) over ``overhead_tokens`` steps,
            as the cost model's ``step_overhead``.
        overhead_tokens: decode steps of that timing run.
        logprobs: top-k log-probs each pass returns, as the runs to predict request them.

    Returns:
        `ForwardTimings`; its `cost_model()` is the measured `CostModel`.
    """
    widths = tuple(int(w) for w in widths)
    if not widths or any(w < 1 for w in widths):
        raise CostModelError(f"widths must be integers >= 1, got {widths!r}")
    if batch < 1 or prompt_len < 1 or repeats < 1 or warmup < 0:
        raise CostModelError("batch, prompt_len and repeats must be >= 1 and warmup >= 0")
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, backend.vocab_size, size=(batch, prompt_len))
    times: list[dict[int, list[float]]] = [{w: [] for w in widths} for _ in range(backend.num_models)]
    for _ in range(repeats + warmup):
        for m in range(backend.num_models):
            _time_model(backend, m, prompts, widths, times[m], logprobs)
    seconds = [tuple(float(np.median(times[m][w][warmup:])) for w in widths) for m in range(backend.num_models)]
    fits = [_fit(widths, s) for s in seconds]
    notes: dict[str, Any] = {"prompt_len": prompt_len, "seed": seed}
    if policy is not None:
        notes["step_overhead"] = loop_overhead(backend, policy, prompts, overhead_tokens, repeats, logprobs)
        notes["overhead_policy"] = policy.spec()
    return ForwardTimings(
        names=tuple(backend.model_names),
        batch=batch,
        widths=widths,
        seconds=tuple(seconds),
        step=tuple(f[0] for f in fits),
        catchup_pass=tuple(f[1] for f in fits),
        per_token=tuple(f[2] for f in fits),
        samples=repeats,
        notes=notes,
    )


def loop_overhead(
    backend: Backend, policy: Any, prompts: np.ndarray, tokens: int, repeats: int, logprobs: int | None = None
) -> float:
    """Median seconds per decode step that the loop spends outside ``backend.forward`` with ``policy``."""
    from ead_sdk.decode import generate

    spent = [0.0]
    start_batch = backend.start

    def start(request: DecodeRequest) -> Any:  # time each pass of the sessions the loop opens
        session = start_batch(request)
        forward = session.forward

        def timed(model: int, lanes: np.ndarray, position: int) -> Any:
            begin = time.perf_counter()
            draw = forward(model, lanes, position)
            to_numpy(draw.token)
            spent[0] += time.perf_counter() - begin
            return draw

        session.forward = timed  # an instance attribute of this session only
        return session

    per_step = []
    backend.start = start  # type: ignore[method-assign]  # an instance attribute, removed below
    try:
        for _ in range(repeats + 1):
            spent[0] = 0.0
            begin = time.perf_counter()
            result = generate(backend, policy, prompts.tolist(), max_new_tokens=tokens, logprobs=logprobs)
            wall = time.perf_counter() - begin
            steps = max(len(lane.tokens) for lane in result.lanes)
            per_step.append(max(wall - spent[0], 0.0) / max(steps, 1))
    finally:
        del backend.start
    return float(np.median(per_step[1:]))


def combine_timings(runs: Sequence[ForwardTimings]) -> ForwardTimings:
    """Several measurements of one backend as one: the median time of each model and width, refitted.

    Taking rounds of `measure_forward_times` between other timed work and combining them puts
    the measurement under the same load as that work (what ``benchmarks/decode_overhead.py`` does).
    """
    if not runs:
        raise CostModelError("no timings to combine")
    first = runs[0]
    if any(r.names != first.names or r.widths != first.widths or r.batch != first.batch for r in runs):
        raise CostModelError("only timings of the same models, widths and batch size combine")
    seconds = tuple(
        tuple(float(np.median([r.seconds[m][i] for r in runs])) for i in range(len(first.widths)))
        for m in range(len(first.names))
    )
    fits = [_fit(first.widths, s) for s in seconds]
    notes = dict(first.notes)
    overheads = [r.notes["step_overhead"] for r in runs if "step_overhead" in r.notes]
    if overheads:
        notes["step_overhead"] = float(np.median(overheads))
    return ForwardTimings(
        names=first.names,
        batch=first.batch,
        widths=first.widths,
        seconds=seconds,
        step=tuple(f[0] for f in fits),
        catchup_pass=tuple(f[1] for f in fits),
        per_token=tuple(f[2] for f in fits),
        samples=sum(r.samples for r in runs),
        notes=notes,
    )
