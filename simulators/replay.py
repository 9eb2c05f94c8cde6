"""Offline replay: a policy routes every recorded sequence, all sequences as lanes of one batch.

A trace is scored *teacher-forced*: every model's distribution was computed along one fixed
trajectory, so replay is a counterfactual on that path. The emitted token is always the
trajectory's token, whichever model the policy picks; what replay measures is which model
would have emitted each token, and what that would have cost.

The step order is the live decoder's (`ead_sdk.decode`): at generated position ``t`` a lane on
model ``m`` shows the policy ``entropy[t, m]`` (and that distribution's top-k) and gets the
route ``r`` of position ``t + 1``; who then emits position ``t`` and which model computes the
next one is `ead_sdk.escalation`'s rule (a retried token's first forward is paid and wasted). Costs are counted by
`ead_sdk.cost.CostLedger` under the live decoder's convention.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ead_sdk.arrays import to_numpy
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.decision import decide_checked, init_checked
from ead_sdk.errors import EngineError, ModelCountError, RouteError, TraceError
from ead_sdk.escalation import rule
from ead_sdk.interface import Policy, Step
from ead_sdk.signal_spec import SignalSpec, signal_of
from ead_sdk.simulators.engines import Engine, RayEngine, as_engine
from ead_sdk.simulators.ledger import fill_ledger
from ead_sdk.simulators.totals import Totals
from ead_sdk.simulators.trace_signal import require_trace_signal, topk_signal
from ead_sdk.specs import as_policy
from ead_sdk.traces.schema import TraceMeta
from ead_sdk.traces.traceset import FlatTrace, TraceSet


@dataclass(frozen=True)
class ReplayData:
    """A trace laid out time-major for replay: ``[t, sequence, model, ...]``, padded past each end.

    Built once per trace and reused by every replay, sweep and calibration step on it.
    """

    flat: FlatTrace
    lengths: np.ndarray
    entropy: np.ndarray
    token_logprob: np.ndarray | None
    tokens: np.ndarray | None
    top_ids: np.ndarray | None
    top_logprobs: np.ndarray | None
    disagree: np.ndarray | None
    agree: np.ndarray | None
    source: str = "<memory>"
    _signals: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def meta(self) -> TraceMeta:
        """The trace metadata."""
        return self.flat.meta

    @property
    def num_sequences(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def t_max(self) -> int:
        return int(self.entropy.shape[0])

    def signal_entropy(self, signal: SignalSpec) -> np.ndarray:
        """``(T, sequences, M)`` the signal a policy sees: the exact entropy, or the top-k estimate.

        The estimate is computed once per ``k`` and kept, so every replay, sweep and calibration
        step on this data reuses it. A trace recorded with fewer than ``k`` log-probabilities is
        refused with `SignalUnavailableError`.
        """
        if signal.exact:
            return self.entropy
        top = self.flat.top_logprobs
        require_trace_signal(signal, self.meta, self.source, has_topk=top is not None)
        k = int(signal.k)  # type: ignore[arg-type]
        if k not in self._signals:
            self._signals[k] = topk_signal(self.flat.padded("top_logprobs"), k, int(self.meta.vocab_size))
        return self._signals[k]

    @classmethod
    def from_traces(cls, traces: TraceSet | ReplayData, *, with_topk: bool = True) -> ReplayData:
        """Lay out ``traces`` for replay (``with_topk=False`` leaves `Step.logprobs` empty)."""
        if isinstance(traces, ReplayData):
            return traces
        if not isinstance(traces, TraceSet):
            raise TraceError(f"replay needs a TraceSet (see ead_sdk.traces.read_traces), got {type(traces).__name__}")
        flat = traces.flat()
        if flat.entropy is None:
            raise TraceError(f"{traces.source}: replay needs the 'entropy' column")
        m = traces.meta.num_models
        top_ids = flat.padded("top_ids") if flat.top_ids is not None and traces.meta.k > 0 else None
        disagree = agree = None
        if top_ids is not None:
            first = top_ids[..., 0]  # (T, n, M): each model's most likely token
            agree = first == first[..., m - 1 : m]
            disagree = np.zeros((top_ids.shape[0] + 1, top_ids.shape[1]), bool)
            disagree[:-1] = first[..., 0] != first[..., m - 1]
            disagree = disagree[1:]  # disagree[t]: at position t + 1 (False past the end)
        return cls(
            flat=flat,
            lengths=flat.lengths.astype(np.int64),
            entropy=flat.padded("entropy"),
            token_logprob=flat.padded("token_logprob") if flat.token_logprob is not None else None,
            tokens=flat.padded("token_ids") if flat.token_ids is not None else None,
            top_ids=top_ids if with_topk else None,
            top_logprobs=flat.padded("top_logprobs") if with_topk and top_ids is not None else None,
            disagree=disagree,
            agree=agree,
            source=traces.source,
        )


@dataclass
class ReplayResult:
    """What a replay did: its figures, and lane by lane where the engine keeps them.

    `report` and `summary` give the same figures whichever engine ran. The local engine also
    keeps every lane's routes and ledger; `RayEngine` keeps only the merged sums (`totals`), the
    routes staying on its workers (``per_lane`` is then ``False``).

    Attributes:
        cost_model: the per-model costs.
        policy_spec: the spec of the policy replayed.
        num_models: models in the trace.
        computed_by: int8 ``(T, lanes)`` the model whose distribution the policy saw at each
            position (``-1`` past a lane's end).
        emitted_by: int8 ``(T, lanes)`` the model that emitted each position (differs from
            ``computed_by`` where a retrying escalation re-emitted it).
        lane_sequence: ``(lanes,)`` the trace sequence each lane replayed.
        ledger: the forward counts (`CostLedger`) of every lane.
        metrics: per-lane arrays (see `lane_metrics`).
        correct: bool ``(sequences, M)`` correctness labels of the single-model runs, if any.
        totals: the merged sums (`Totals`) of a replay that kept no lanes.
    """

    cost_model: CostModel
    policy_spec: dict[str, Any]
    num_models: int
    computed_by: np.ndarray | None = None
    emitted_by: np.ndarray | None = None
    lane_sequence: np.ndarray | None = None
    ledger: CostLedger | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    correct: np.ndarray | None = None
    totals: Totals | None = None

    @property
    def per_lane(self) -> bool:
        """Whether the lanes' routes and ledger were kept (the local engine)."""
        return self.ledger is not None

    @property
    def lanes(self) -> int:
        if self.lane_sequence is None:
            return self.totals.sequences if self.totals is not None else 0
        return int(self.lane_sequence.shape[0])

    def _need_lanes(self, what: str) -> None:
        if not self.per_lane:
            raise EngineError(f"{what} needs per-lane results: RayEngine keeps only the totals (use LocalEngine)")

    def report(self, lanes: np.ndarray | None = None) -> CostReport:
        """The summed `CostReport` of ``lanes`` (all by default)."""
        if self.ledger is None and lanes is None and self.totals is not None:
            return self.totals.report(self.cost_model)
        self._need_lanes("report(lanes)")
        return self.ledger.report(self.cost_model, lanes)

    def routes(self, lane: int) -> np.ndarray:
        """The emitting model of each generated token of ``lane``."""
        self._need_lanes("routes(lane)")
        col = self.emitted_by[:, lane]
        return col[col >= 0].astype(np.int64)

    def summary(self, lanes: np.ndarray | None = None) -> dict[str, Any]:
        """Aggregate metrics of ``lanes`` (token-weighted where the quantity is per token)."""
        if self.ledger is None and lanes is None and self.totals is not None:
            return self.totals.summary(self.cost_model)
        self._need_lanes("summary(lanes)")
        from ead_sdk.simulators.metrics import aggregate

        return aggregate(self, lanes)


def replay(
    traces: TraceSet | ReplayData | str | os.PathLike[str],
    policy: Policy | Mapping[str, Any] | str,
    *,
    cost_model: CostModel | None = None,
    lane_sequence: np.ndarray | None = None,
    with_topk: bool = True,
    engine: Engine | None = None,
) -> ReplayResult:
    """Replay ``policy`` on every sequence of ``traces`` as the lanes of one batch.

    Args:
        traces: a `TraceSet` (or a `ReplayData` prepared once and reused); with a `RayEngine`
            a `TraceSet` or the path of a Parquet trace dataset.
        policy: a policy object (``replay_only`` ones included; per-lane parameter arrays must
            have one value per lane), or its spec or name.
        cost_model: per-model costs (default: the trace's parameter counts).
        lane_sequence: which sequence each lane replays (default: each sequence once); a sweep
            tiles the sequences once per configuration. Local engine only.
        with_topk: show the policy each distribution's top-k (`Step.logprobs`/`token_ids`);
            ``False`` skips that per-step gather for policies that only read the entropy.
        engine: `LocalEngine` (default) or `RayEngine`; see `ead_sdk.simulators.engines`.

    Returns:
        A `ReplayResult`. The local engine keeps per-lane routes, the `CostLedger` and metrics;
        a `RayEngine` keeps the merged totals, whose `report` and `summary` equal the local ones.
    """
    engine = as_engine(engine)
    policy = as_policy(policy)
    if isinstance(engine, RayEngine):
        if lane_sequence is not None:
            raise EngineError("RayEngine replays each sequence once; lane_sequence is for the LocalEngine")
        from ead_sdk.simulators.ray_engine import ray_replay

        return ray_replay(
            traces,
            policy,
            cost_model=cost_model,
            with_topk=with_topk,
            address=engine.address,
            batch_rows=engine.batch_rows,
        )
    data = ReplayData.from_traces(traces, with_topk=with_topk)
    cost_model = _cost_model(data.meta, policy, cost_model)
    seq = _lane_sequence(data, lane_sequence)
    threads = default_threads() if engine.threads is None else int(engine.threads)
    signal = data.signal_entropy(signal_of(policy))  # once per trace and k, whatever the lanes
    computed, emitted, ledger, sums = _replay_blocks(data, policy, seq, with_topk, threads, signal)
    result = ReplayResult(
        cost_model=cost_model,
        policy_spec=_spec(policy),
        num_models=data.meta.num_models,
        computed_by=computed,
        emitted_by=emitted,
        lane_sequence=seq,
        ledger=ledger,
        correct=data.flat.correct,
    )
    from ead_sdk.simulators.metrics import lane_metrics

    result.metrics = lane_metrics(result, data, sums)
    return result


def _cost_model(meta: TraceMeta, policy: Policy, cost_model: CostModel | None) -> CostModel:
    """Check the policy can route the trace's models; the given cost model, or the trace's."""
    policy.check_models(meta.num_models)
    if cost_model is None:
        return meta.cost_model()
    cost_model.check_models(meta.num_models, "the trace")
    return cost_model


def _lane_sequence(data: ReplayData, lane_sequence: np.ndarray | None) -> np.ndarray:
    seq = np.arange(data.num_sequences) if lane_sequence is None else np.asarray(lane_sequence, np.int64)
    if seq.ndim != 1 or (seq.size and (int(seq.min()) < 0 or int(seq.max()) >= data.num_sequences)):
        raise EngineError(f"lane_sequence must be a 1-d array of sequence indices in [0, {data.num_sequences})")
    return seq


def _replay_blocks(
    data: ReplayData, policy: Policy, seq: np.ndarray, with_topk: bool, threads: int, signal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, CostLedger, dict[str, np.ndarray]]:
    """Replay the lanes in blocks (one per thread): routes, the filled ledger, per-lane emitter sums."""
    import array_api_compat.numpy as xp

    from ead_sdk.simulators.metrics import emitter_sums

    n, t_max, m_count = int(seq.shape[0]), data.t_max, data.meta.num_models
    computed = np.full((t_max, n), -1, np.int8)
    emitted = np.full((t_max, n), -1, np.int8)
    ledger = CostLedger(n, m_count, data.flat.prompt_lengths[seq])
    state = init_checked(policy, n, xp)
    topk = with_topk and data.top_logprobs is not None
    lengths = data.lengths[seq]

    def block(lanes: slice) -> dict[str, np.ndarray]:
        sub = {key: value[lanes] for key, value in state.items()}
        _run(data, policy, seq[lanes], sub, computed[:, lanes], emitted[:, lanes], topk, signal, lanes.start)
        fill_ledger(ledger, computed, emitted, lengths, lanes=lanes)
        return emitter_sums(emitted[:, lanes], data, seq[lanes])

    blocks = lane_blocks(n, threads)
    if len(blocks) == 1:
        parts = [block(blocks[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(blocks), thread_name_prefix="ead-replay") as pool:
            parts = list(pool.map(block, blocks))
    sums = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return computed, emitted, ledger, sums


def _spec(policy: Policy) -> dict[str, Any]:
    try:
        return policy.spec()
    except Exception:  # noqa: BLE001 - a spec is informative only here
        return {"policy": getattr(policy, "name", type(policy).__name__)}


def default_threads() -> int:
    """Threads a local replay uses by default: the CPUs this process may run on, at most 2.

    The lanes are independent and numpy releases the GIL inside each array operation, so two
    threads replay large batches faster (docs/performance.md); every thread adds a GIL hand-off
    per operation, so more than two gain little, and smaller batches stay on one thread
    (`MIN_BLOCK_LANES`).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


MIN_BLOCK_LANES = 30_000
"""Fewest lanes worth a thread of their own.

Each array operation of a step hands the GIL between the threads, a fixed cost per step whatever
the block size, so a thread pays off only on large blocks (measurements: docs/performance.md).
"""


def lane_blocks(n: int, threads: int, min_lanes: int | None = None) -> list[slice]:
    """Split lanes ``0..n-1`` into at most ``threads`` contiguous blocks of at least ``min_lanes``.

    ``min_lanes`` defaults to `MIN_BLOCK_LANES` (read at each call, so tests may lower it).
    """
    least = MIN_BLOCK_LANES if min_lanes is None else min_lanes
    count = max(1, min(threads, n // max(1, least)))
    edges = [n * i // count for i in range(count + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(count)]


def _run(
    data: ReplayData,
    policy: Policy,
    seq: np.ndarray,
    state: dict[str, Any],
    computed: np.ndarray,
    emitted: np.ndarray,
    with_topk: bool,
    signal: np.ndarray,
    first_lane: int = 0,
) -> None:
    """The step loop over one block of lanes: fills ``computed`` and ``emitted`` ``(T, lanes)``.

    ``state`` is the policy state of these lanes; ``signal`` ``(T, sequences, M)`` what they see
    as `Step.entropy`; ``first_lane`` is the block's first lane (error messages name lanes of the
    whole replay).
    """
    n, m_count, t_max = seq.shape[0], data.meta.num_models, data.t_max
    escalation = rule(policy.escalation)
    retry = escalation.retries
    lengths = data.lengths[seq]
    model = np.full(n, policy.initial_model, np.int64)
    base = seq * m_count
    idx = np.empty(n, np.int64)
    k = int(data.meta.k)
    spec = signal_of(policy)
    shown = k if spec.exact else int(spec.k)  # a top-k signal shows the policy only its k
    # Look-ahead is for replay-only (oracle) policies; a live-capable policy never reads it.
    disagree = data.disagree if getattr(policy, "replay_only", False) else None
    # While every lane is live (t < the shortest length) the masks below are no-ops: skip them.
    all_live = int(lengths.min(initial=t_max))
    # Lanes that tile the sequences (a sweep's block) gather per-sequence rows by tiling them.
    n_seq = data.num_sequences
    tiles = n // n_seq if n_seq and n % n_seq == 0 else 0
    tiled = tiles > 0 and np.array_equal(seq, np.tile(np.arange(n_seq), tiles))
    every = np.ones(n, bool)
    for t in range(t_max):
        full = t < all_live
        live = every if full else lengths > t
        np.add(base, model, out=idx)
        # Every index is in range (lane_sequence and the routes are checked): no bounds checks.
        entropy = signal[t].reshape(-1).take(idx, mode="wrap")
        logprobs = token_ids = None
        if with_topk:
            logprobs = data.top_logprobs[t].reshape(-1, k)[:, :shown].take(idx, axis=0, mode="wrap")
            token_ids = data.top_ids[t].reshape(-1, k)[:, :shown].take(idx, axis=0, mode="wrap")
        future = None if disagree is None else {"disagree": disagree[t].take(seq, mode="wrap")}
        token = None
        if data.tokens is not None:
            token = np.tile(data.tokens[t], tiles) if tiled else data.tokens[t].take(seq, mode="wrap")
        step = Step(
            entropy=entropy,
            model=model,
            index=np.broadcast_to(np.int64(t), (n,)),
            live=live,
            logprobs=logprobs,
            token_ids=token_ids,
            token=token,
            vocab_size=int(data.meta.vocab_size),
            future=future,
        )
        routes, state = decide_checked(policy, state, step, n, t)
        routes = _checked_routes(policy, routes, n, m_count, first_lane)
        if full:
            computed[t] = model
            if retry:
                escalation.emitter(routes, model, out=emitted[t])
            model = escalation.next_model(routes, model)
            continue
        computed[t] = np.where(live, model, -1)
        if retry:
            emitted[t] = np.where(live, escalation.emitter(routes, model), -1)
        model = np.where(live, escalation.next_model(routes, model), model)
    if not retry:  # without retries every position is emitted by the model that computed it
        np.copyto(emitted, computed)


def _checked_routes(policy: Policy, routes: Any, n: int, m_count: int, first_lane: int) -> np.ndarray:
    """The routes as a host array, refused unless ``(n,)`` model indices below ``m_count``."""
    routes = np.asarray(to_numpy(routes))
    if routes.shape != (n,):
        raise RouteError(f"policy {policy.name!r} returned routes of shape {routes.shape}, expected ({n},)")
    if routes.dtype.kind in "iu":  # one reduction: a negative route is a huge unsigned one
        lo, hi = 0, int(routes.view(routes.dtype.str.replace("i", "u")).max(initial=0))
    else:
        lo, hi = int(routes.min(initial=0)), int(routes.max(initial=0))
    if lo < 0 or hi >= m_count:
        bad = int(np.flatnonzero((routes < 0) | (routes >= m_count))[0])
        raise ModelCountError(
            f"policy {policy.name!r} routed lane {first_lane + bad} to model {int(routes[bad])}, "
            f"not one of {m_count} models"
        )
    return routes
