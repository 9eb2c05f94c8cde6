"""Cost accounting: every forward token of every model, and the reports built from them.

Counting convention (the same in the live decoder, the trace backend and replay). Positions are
counted among generated tokens: computing the distribution of generated position ``t`` with model
``m`` needs the model to have consumed inputs ``0..t`` (input 0 is the prompt's last token).
The last of those is the *step* forward; any earlier ones the model missed while idle are its
*catch-up*, done in one pass. A retried token's discarded forward is *wasted* (and still paid).
The prompt's other tokens are *prefill*, reported apart (the EAD paper counts generated tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ead_sdk.errors import CostModelError


@dataclass(frozen=True)
class CostModel:
    """Cost of one forward token for each model, smallest first.

    Attributes:
        costs: per-model cost of one forward token (parameter count by default, as in the EAD
            paper, or measured seconds per token).
        unit: ``"params"`` or ``"seconds"``.
        names: optional model names, for reports.
        catchup_costs: per-model cost of one *catch-up* token, when it differs from a decode
            token's (default: the same as ``costs``). In FLOPs the two are equal; in wall-clock
            time a catch-up of many tokens runs as one batched pass and costs far less per token
            than sequential decoding, so a latency model prices it apart (0 = free).
        catchup_pass_costs: per-model fixed cost of a pass that consumes more than one token (a
            catch-up, or a model's first pass over the prompt), besides ``catchup_costs`` per
            further token (default: ``costs``, a step). Measured wall-clock needs it: on a CPU a
            two-token pass costs far more than a one-token step, while further tokens add little.
            Used by `predict_seconds` with a live run's pass counts.
        step_overhead: cost of one decode step outside the models' forwards (the policy's
            ``decide``, the loop's bookkeeping and host sync), measured by `measure` when given a
            policy; 0 for the parameter-count model. `predict_seconds` adds it once per step.
    """

    costs: tuple[float, ...]
    unit: str = "params"
    names: tuple[str, ...] | None = None
    catchup_costs: tuple[float, ...] | None = None
    step_overhead: float = 0.0
    catchup_pass_costs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        costs = tuple(float(c) for c in self.costs)
        if not costs or any(not np.isfinite(c) or c <= 0 for c in costs):
            raise CostModelError(f"model costs must be positive and finite, got {self.costs!r}")
        if self.names is not None and len(self.names) != len(costs):
            raise CostModelError(f"{len(self.names)} model names for {len(costs)} model costs")
        object.__setattr__(self, "costs", costs)
        if self.names is not None:  # a list from JSON (from_dict) compares and hashes as the tuple would
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if self.catchup_costs is not None:
            catchup = tuple(float(c) for c in self.catchup_costs)
            if len(catchup) != len(costs):
                raise CostModelError(f"{len(catchup)} catch-up costs for {len(costs)} model costs")
            if any(not np.isfinite(c) or c < 0 for c in catchup):
                raise CostModelError(f"catch-up costs must be finite and >= 0, got {self.catchup_costs!r}")
            object.__setattr__(self, "catchup_costs", catchup)
        if self.catchup_pass_costs is not None:
            passes = tuple(float(c) for c in self.catchup_pass_costs)
            if len(passes) != len(costs) or any(not np.isfinite(c) or c < 0 for c in passes):
                raise CostModelError(f"catch-up pass costs must be {len(costs)} finite values >= 0, got {passes!r}")
            object.__setattr__(self, "catchup_pass_costs", passes)
        overhead = float(self.step_overhead)
        if not np.isfinite(overhead) or overhead < 0:
            raise CostModelError(f"step_overhead must be finite and >= 0, got {self.step_overhead!r}")
        object.__setattr__(self, "step_overhead", overhead)

    @classmethod
    def from_param_counts(cls, counts: Sequence[float], names: Sequence[str] | None = None) -> CostModel:
        """Cost proportional to parameter count (the EAD paper's measure; catch-up tokens cost the same)."""
        return cls(tuple(counts), "params", tuple(names) if names else None)

    @classmethod
    def from_seconds_per_token(
        cls,
        seconds: Sequence[float],
        names: Sequence[str] | None = None,
        catchup_seconds: Sequence[float] | None = None,
    ) -> CostModel:
        """Cost as measured wall-clock seconds per decode token (and per catch-up token, if measured)."""
        return cls(
            tuple(seconds),
            "seconds",
            tuple(names) if names else None,
            tuple(catchup_seconds) if catchup_seconds is not None else None,
        )

    def check_models(self, num_models: int, where: str) -> None:
        """Refuse to price ``num_models`` models (those of ``where``) with a cost model for another count."""
        if self.num_models != num_models:
            raise CostModelError(f"cost model has {self.num_models} models, {where} has {num_models}")

    @property
    def num_models(self) -> int:
        return len(self.costs)

    def forward_cost(self, steps: np.ndarray, catchup: np.ndarray) -> np.ndarray:
        """Cost of ``steps`` step forwards and ``catchup`` catch-up tokens, summed over the last (model) axis."""
        decode = np.asarray(self.costs)
        caught = decode if self.catchup_costs is None else np.asarray(self.catchup_costs)
        return (steps * decode).sum(-1) + (catchup * caught).sum(-1)

    @classmethod
    def measure(cls, backend: Any, **options: Any) -> CostModel:
        """Time ``backend``'s decode step and catch-up pass of each model on this hardware.

        A thin front to `ead_sdk.timing.measure_forward_times` (same options: ``batch``,
        ``widths``, ``prompt_len``, ``repeats``, ``seed``, and ``policy`` to time the loop's
        per-step overhead with that policy): each model's pass time is fitted as
        ``step + (width - 1) * per_token``, giving ``costs`` (a decode step, in seconds) and
        ``catchup_costs`` (each further token of a catch-up pass). `predict_seconds` then turns a
        run's report into predicted wall-clock.
        """
        from ead_sdk.timing import measure_forward_times

        return measure_forward_times(backend, **options).cost_model()

    def predict_seconds(self, report: CostReport) -> float:
        """Predicted time of the forwards in ``report``, in this model's unit.

        With a live run's pass counts: a one-token pass costs a step, a wider one
        ``catchup_pass_costs`` plus ``catchup_costs`` per further token, and each decode step adds
        ``step_overhead``. Without them (a per-lane or replay report), every lane is taken as its own batch:
        its steps, plus its catch-up and prefill tokens at ``catchup_costs``.
        """
        step, extra = self._step_and_extra()
        if report.passes:
            passes, tokens = np.asarray(report.passes), np.asarray(report.pass_tokens)
            wide = np.asarray(report.catchup_passes)
            models = (passes - wide) * step + wide * self._pass_base() + (tokens - passes) * extra
            return float(models.sum() + report.decode_steps * self.step_overhead)
        forwards, catchup = np.asarray(report.forwards), np.asarray(report.catchup)
        models = ((forwards - catchup) * step).sum() + ((catchup + np.asarray(report.prefill)) * extra).sum()
        return float(models + report.tokens * self.step_overhead)

    def large_only_seconds(self, report: CostReport) -> float:
        """Predicted time of the largest model alone on the same prompts and tokens as ``report``."""
        step, extra = self._step_and_extra()
        if report.passes:  # one prefill pass over the widest prompt, then a step per position
            prefill = self._pass_base()[-1] + report.large_prefill * extra[-1] if report.large_prefill else step[-1]
            steps = max(report.decode_steps - 1, 0) * step[-1] + report.decode_steps * self.step_overhead
            return float(prefill + steps)
        return float(report.tokens * (step[-1] + self.step_overhead) + max(report.prefill, default=0) * extra[-1])

    def predicted_speedup(self, report: CostReport) -> float:
        """``large_only_seconds / predict_seconds``: the speed-up over the largest model alone this model predicts."""
        own = self.predict_seconds(report)
        return self.large_only_seconds(report) / own if own > 0 else float("nan")

    def _pass_base(self) -> np.ndarray:
        return np.asarray(self.costs if self.catchup_pass_costs is None else self.catchup_pass_costs)

    def _step_and_extra(self) -> tuple[np.ndarray, np.ndarray]:
        step = np.asarray(self.costs)
        return step, step if self.catchup_costs is None else np.asarray(self.catchup_costs)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form; `from_dict` (or ``CostModel(**d)``) rebuilds it."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> CostModel:
        """Rebuild a cost model from `as_dict`'s form (extra keys, such as a measurement's notes, are ignored)."""
        if not isinstance(data, dict) or "costs" not in data:
            raise CostModelError("a cost model is a JSON object with a 'costs' list (see CostModel.as_dict)")
        known = {"costs", "unit", "names", "catchup_costs", "step_overhead", "catchup_pass_costs"}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class CostReport:
    """What a set of lanes cost, summed over them.

    ``large_share`` is the share of emitted tokens from the largest model; ``cost_ratio`` is the
    cost of every forward (catch-up and wasted ones included) divided by the cost of the largest
    model alone emitting the same tokens; ``switches`` counts changes of emitting model.

    The live decoder also reports its batch's forward *passes* (a pass runs one model over the
    batch; empty for a per-lane report and for replay): ``passes`` and ``pass_tokens`` per model
    (the widest lane's tokens in each pass, its prompt on a model's first pass included),
    ``catchup_passes`` (the passes wider than one token),
    ``decode_steps`` (positions the batch ran) and ``large_prefill`` (the prompt tokens a
    large-only run of the same batch prefills). `CostModel.predict_seconds` reads them.
    """

    tokens: int
    emitted: tuple[int, ...]
    forwards: tuple[int, ...]
    catchup: tuple[int, ...]
    wasted: tuple[int, ...]
    prefill: tuple[int, ...]
    switches: int
    large_share: float
    cost: float
    cost_ratio: float
    unit: str
    # How the batch ran, not what the routing cost: reports of the same lanes compare equal however batched.
    passes: tuple[int, ...] = field(default=(), compare=False)
    pass_tokens: tuple[int, ...] = field(default=(), compare=False)
    catchup_passes: tuple[int, ...] = field(default=(), compare=False)
    decode_steps: int = field(default=0, compare=False)
    large_prefill: int = field(default=0, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CostLedger:
    """Per-lane forward counts for ``n`` lanes and ``num_models`` models (host numpy arrays)."""

    def __init__(self, n: int, num_models: int, prompt_lengths: Sequence[int] | np.ndarray | None = None):
        self.n, self.num_models = n, num_models
        shape = (n, num_models)
        self.consumed = np.zeros(shape, np.int64)
        self.steps = np.zeros(shape, np.int64)
        self.catchup = np.zeros(shape, np.int64)
        self.wasted = np.zeros(shape, np.int64)
        self.emitted = np.zeros(shape, np.int64)
        self.prefill = np.zeros(shape, np.int64)
        self.used = np.zeros(shape, bool)
        self.switches = np.zeros(n, np.int64)
        self.last = np.full(n, -1, np.int64)
        p = np.ones(n, np.int64) if prompt_lengths is None else np.asarray(prompt_lengths, np.int64)
        self.prompt_lengths = p
        self.passes = np.zeros(num_models, np.int64)
        self.pass_tokens = np.zeros(num_models, np.int64)
        self.catchup_passes = np.zeros(num_models, np.int64)

    def forward_pass(self, lanes: np.ndarray, model: int, position: int) -> np.ndarray:
        """`compute` for ``lanes`` run together as one forward pass of ``model`` (the live decoder's unit of time).

        Besides the per-lane counts, counts the pass and its width: the widest lane's tokens,
        its prompt included when the model had not run on that lane yet.
        """
        lanes = np.asarray(lanes, np.int64)
        first = ~self.used[lanes, model]
        behind = self.compute(lanes, np.full(lanes.size, model), np.full(lanes.size, position))
        width = behind + 1 + np.where(first, np.maximum(self.prompt_lengths[lanes] - 1, 0), 0)
        widest = int(width.max()) if width.size else 0
        self.passes[model] += 1
        self.pass_tokens[model] += widest
        self.catchup_passes[model] += widest > 1
        return behind

    def compute(self, lanes: np.ndarray, models: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Record that ``models[i]`` computed generated position ``position[i]`` for ``lanes[i]``.

        Returns the catch-up token count of each (0 when the model was up to date).
        """
        lanes = np.asarray(lanes, np.int64)
        models = np.asarray(models, np.int64)
        position = np.asarray(position, np.int64)
        behind = position - self.consumed[lanes, models]
        if np.any(behind < 0):
            raise CostModelError("a model was asked to compute a position it has already passed")
        first = ~self.used[lanes, models]
        self.prefill[lanes[first], models[first]] += np.maximum(self.prompt_lengths[lanes[first]] - 1, 0)
        self.used[lanes, models] = True
        self.catchup[lanes, models] += behind
        self.steps[lanes, models] += 1
        self.consumed[lanes, models] = position + 1
        return behind

    def waste(self, lanes: np.ndarray, models: np.ndarray) -> None:
        """Mark the step forward of ``models`` on ``lanes`` as discarded (a retried token)."""
        self.wasted[np.asarray(lanes, np.int64), np.asarray(models, np.int64)] += 1

    def emit(self, lanes: np.ndarray, models: np.ndarray) -> None:
        """Record that ``models[i]`` emitted the next token of ``lanes[i]``."""
        lanes = np.asarray(lanes, np.int64)
        models = np.asarray(models, np.int64)
        prev = self.last[lanes]
        self.switches[lanes] += (prev >= 0) & (prev != models)
        self.last[lanes] = models
        self.emitted[lanes, models] += 1

    # -- reports --------------------------------------------------------------------------
    def _check(self, cost_model: CostModel) -> np.ndarray:
        cost_model.check_models(self.num_models, "ledger")
        return np.asarray(cost_model.costs)

    def per_lane(self, cost_model: CostModel) -> dict[str, np.ndarray]:
        """Per-lane ``tokens``, ``large_share``, ``cost``, ``cost_ratio`` and ``switches``."""
        costs = self._check(cost_model)
        tokens = self.emitted.sum(1)
        cost = cost_model.forward_cost(self.steps, self.catchup)
        with np.errstate(invalid="ignore", divide="ignore"):
            large_share = np.where(tokens > 0, self.emitted[:, -1] / np.maximum(tokens, 1), 0.0)
            cost_ratio = np.where(tokens > 0, cost / (costs[-1] * np.maximum(tokens, 1)), 0.0)
        return {
            "tokens": tokens,
            "large_share": large_share,
            "cost": cost,
            "cost_ratio": cost_ratio,
            "switches": self.switches.copy(),
        }

    def report(self, cost_model: CostModel, lanes: np.ndarray | None = None) -> CostReport:
        """The summed `CostReport` of ``lanes`` (all lanes by default)."""
        costs = self._check(cost_model)
        sel = slice(None) if lanes is None else np.asarray(lanes)
        emitted = self.emitted[sel].sum(0)
        steps, catchup = self.steps[sel].sum(0), self.catchup[sel].sum(0)
        forwards = steps + catchup
        tokens = int(emitted.sum())
        cost = float(cost_model.forward_cost(steps, catchup))
        return CostReport(
            tokens=tokens,
            emitted=tuple(int(v) for v in emitted),
            forwards=tuple(int(v) for v in forwards),
            catchup=tuple(int(v) for v in self.catchup[sel].sum(0)),
            wasted=tuple(int(v) for v in self.wasted[sel].sum(0)),
            prefill=tuple(int(v) for v in self.prefill[sel].sum(0)),
            switches=int(self.switches[sel].sum()),
            large_share=_large_share(emitted[-1], tokens),
            cost=cost,
            cost_ratio=_cost_ratio(cost, costs[-1], tokens),
            unit=cost_model.unit,
            **(self._batch_fields() if lanes is None else {}),
        )

    def _batch_fields(self) -> dict[str, Any]:
        """The batch-level pass counts of `CostReport` (only meaningful for all lanes together)."""
        if not self.passes.any():
            return {}
        return {
            "passes": tuple(int(v) for v in self.passes),
            "pass_tokens": tuple(int(v) for v in self.pass_tokens),
            "catchup_passes": tuple(int(v) for v in self.catchup_passes),
            "decode_steps": int(self.emitted.sum(1).max()) if self.n else 0,
            "large_prefill": int(max(int(self.prompt_lengths.max()) - 1, 0)) if self.n else 0,
        }


def _large_share(large_tokens: int, tokens: int) -> float:
    return float(large_tokens / tokens) if tokens else 0.0


def _cost_ratio(cost: float, large_cost: float, tokens: int) -> float:
    """Cost relative to the largest model alone emitting the same tokens."""
    return float(cost / (large_cost * tokens)) if tokens else 0.0


def sum_reports(reports: Sequence[CostReport], cost_model: CostModel) -> CostReport:
    """The report of several runs' lanes together: counts and costs add, shares and ratios are recomputed.

    Args:
        reports: reports priced with ``cost_model`` (at least one).
        cost_model: their cost model (its largest model's cost is the denominator of ``cost_ratio``).
    """
    if not reports:
        raise CostModelError("sum_reports needs at least one report")

    def add(name: str) -> tuple[int, ...]:
        return tuple(int(sum(vals)) for vals in zip(*(getattr(r, name) for r in reports), strict=True))

    emitted = add("emitted")
    tokens = sum(r.tokens for r in reports)
    cost = float(sum(r.cost for r in reports))
    return CostReport(
        tokens=tokens,
        emitted=emitted,
        forwards=add("forwards"),
        catchup=add("catchup"),
        wasted=add("wasted"),
        prefill=add("prefill"),
        switches=sum(r.switches for r in reports),
        large_share=_large_share(emitted[-1], tokens),
        cost=cost,
        cost_ratio=_cost_ratio(cost, float(cost_model.costs[-1]), tokens),
        unit=reports[0].unit,
        **_batch_sums(reports),
    )


def _batch_sums(reports: Sequence[CostReport]) -> dict[str, Any]:
    """The runs' forward-pass counts added up (what `CostModel.predict_seconds` reads), when every run has them."""
    if not all(r.passes for r in reports):
        return {}

    def add(name: str) -> tuple[int, ...]:
        return tuple(int(sum(v)) for v in zip(*(getattr(r, name) for r in reports), strict=True))

    return {
        "passes": add("passes"),
        "pass_tokens": add("pass_tokens"),
        "catchup_passes": add("catchup_passes"),
        "decode_steps": sum(r.decode_steps for r in reports),
        "large_prefill": sum(r.large_prefill for r in reports),
    }
