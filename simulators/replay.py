"""Offline replay: a policy routes every recorded sequence, all sequences as lanes of one batch.

A trace is scored *teacher-forced*: every model's distribution was computed along one fixed
trajectory, so replay is a counterfactual on that path. The emitted token is always the
trajectory's token, whichever model the policy picks; what replay measures is which model
would have emitted each token, and what that would have cost.

The step order is DESIGN.md's "One decode step": at generated position ``t`` a lane on model
``m`` shows the policy ``entropy[t, m]`` (and that distribution's top-k), gets the route ``r``
of position ``t + 1``; with escalation ``"retry"`` and ``r > m`` model ``r`` also computes
position ``t`` and emits it (model ``m``'s forward is paid and wasted). Costs are counted by
`ead_sdk.cost.CostLedger` under the live decoder's convention.
"""

from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ead_sdk.simulators.ledger import fill_ledger

from ead_sdk.arrays import to_numpy
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.decision import decide_checked, init_checked
from ead_sdk.errors import EadError, ModelCountError, TraceError
from ead_sdk.interface import RETRYING, Policy, Step
from ead_sdk.traces.schema import TraceMeta
from ead_sdk.traces.traceset import FlatTrace, TraceSet

if TYPE_CHECKING:
    from ead_sdk.simulators.totals import ReplayTotals


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
        )


@dataclass
class ReplayResult:
    """What a replay did, lane by lane.

    Attributes:
        computed_by: int8 ``(T, lanes)`` the model whose distribution the policy saw at each
            position (``-1`` past a lane's end).
        emitted_by: int8 ``(T, lanes)`` the model that emitted each position (differs from
            ``computed_by`` where a ``"retry"`` escalation re-emitted it).
        lane_sequence: ``(lanes,)`` the trace sequence each lane replayed.
        ledger: the forward counts (`CostLedger`) of every lane.
        cost_model: the per-model costs.
        metrics: per-lane arrays (see `lane_metrics`).
        policy_spec: the spec of the policy replayed.
        num_models: models in the trace.
        correct: bool ``(sequences, M)`` correctness labels of the single-model runs, if any.
    """

    computed_by: np.ndarray
    emitted_by: np.ndarray
    lane_sequence: np.ndarray
    ledger: CostLedger
    cost_model: CostModel
    metrics: dict[str, np.ndarray]
    policy_spec: dict[str, Any]
    num_models: int
    correct: np.ndarray | None = None

    @property
    def lanes(self) -> int:
        return int(self.lane_sequence.shape[0])

    def report(self, lanes: np.ndarray | None = None) -> CostReport:
        """The summed `CostReport` of ``lanes`` (all by default)."""
        return self.ledger.report(self.cost_model, lanes)

    def routes(self, lane: int) -> np.ndarray:
        """The emitting model of each generated token of ``lane``."""
        col = self.emitted_by[:, lane]
        return col[col >= 0].astype(np.int64)

    def summary(self, lanes: np.ndarray | None = None) -> dict[str, Any]:
        """Aggregate metrics of ``lanes`` (token-weighted where the quantity is per token)."""
        from ead_sdk.simulators.metrics import aggregate

        return aggregate(self, lanes)


def replay(
    traces: TraceSet | ReplayData | str | os.PathLike[str],
    policy: Policy,
    *,
    cost_model: CostModel | None = None,
    lane_sequence: np.ndarray | None = None,
    with_topk: bool = True,
    engine: str = "local",
    address: str | None = None,
    batch_rows: int = 1024,
    threads: int | None = None,
) -> ReplayResult | ReplayTotals:
    """Replay ``policy`` on every sequence of ``traces`` as the lanes of one batch.

    Args:
        traces: a `TraceSet` (or a `ReplayData` prepared once and reused); with ``engine="ray"``
            a `TraceSet` or the path of a Parquet trace dataset.
        policy: any policy, ``replay_only`` ones included; per-lane parameter arrays must have
            one value per lane.
        cost_model: per-model costs (default: the trace's parameter counts).
        lane_sequence: which sequence each lane replays (default: each sequence once); a sweep
            tiles the sequences once per configuration.
        with_topk: show the policy each distribution's top-k (`Step.logprobs`/`token_ids`);
            ``False`` skips that per-step gather for policies that only read the entropy.
        engine: ``"local"`` (this process, the default) or ``"ray"`` (Ray Data; needs the
            ``ray`` extra).
        address: the Ray cluster to join (``engine="ray"``; default ``RAY_ADDRESS`` or local).
        batch_rows: sequences per Ray batch (``engine="ray"``).
        threads: threads of the local engine, each replaying its own block of lanes (the lanes
            are independent, and numpy releases the GIL inside its array loops); the default is
            `default_threads` (at most 2). Each block has at least `MIN_BLOCK_LANES` lanes, so
            small replays run on one thread. The result is the same for any thread count. Ray
            workers replay on one thread each.

    Returns:
        A `ReplayResult` with per-lane routes, the `CostLedger` and metrics; with ``engine="ray"``
        a `ReplayTotals` whose `report` and `summary` equal the local ones (routes stay on workers).
    """
    if engine == "ray":
        if lane_sequence is not None:
            raise EadError("engine='ray' replays each sequence once; lane_sequence is for the local engine")
        from ead_sdk.simulators.ray_engine import ray_replay

        return ray_replay(
            traces, policy, cost_model=cost_model, with_topk=with_topk, address=address, batch_rows=batch_rows
        )
    if engine != "local":
        raise EadError(f"engine must be 'local' or 'ray', got {engine!r}")
    data = ReplayData.from_traces(traces, with_topk=with_topk)
    meta = data.meta
    m_count = meta.num_models
    policy.check_models(m_count)
    if cost_model is None:
        cost_model = meta.cost_model()
    elif cost_model.num_models != m_count:
        raise EadError(f"cost model has {cost_model.num_models} models, the trace has {m_count}")
    seq = np.arange(data.num_sequences) if lane_sequence is None else np.asarray(lane_sequence, np.int64)
    if seq.ndim != 1 or (seq.size and (int(seq.min()) < 0 or int(seq.max()) >= data.num_sequences)):
        raise EadError(f"lane_sequence must be a 1-d array of sequence indices in [0, {data.num_sequences})")
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise EadError(f"threads must be an integer >= 1, got {threads!r}")
    threads = int(threads)
    n, t_max = int(seq.shape[0]), data.t_max
    computed = np.full((t_max, n), -1, np.int8)
    emitted = np.full((t_max, n), -1, np.int8)
    ledger = CostLedger(n, m_count, data.flat.prompt_lengths[seq])
    import array_api_compat.numpy as xp

    state = init_checked(policy, n, xp)
    topk = with_topk and data.top_logprobs is not None
    lengths = data.lengths[seq]
    from ead_sdk.simulators.metrics import emitter_sums, lane_metrics

    def block(lanes: slice) -> dict[str, np.ndarray]:
        sub = {key: value[lanes] for key, value in state.items()}
        _run(data, policy, seq[lanes], sub, computed[:, lanes], emitted[:, lanes], topk, lanes.start)
        fill_ledger(ledger, computed, emitted, lengths, lanes=lanes)
        return emitter_sums(emitted[:, lanes], data, seq[lanes])

    blocks = lane_blocks(n, threads)
    if len(blocks) == 1:
        parts = [block(blocks[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(blocks), thread_name_prefix="ead-replay") as pool:
            parts = list(pool.map(block, blocks))
    sums = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    result = ReplayResult(
        computed_by=computed,
        emitted_by=emitted,
        lane_sequence=seq,
        ledger=ledger,
        cost_model=cost_model,
        metrics={},
        policy_spec=_spec(policy),
        num_models=m_count,
        correct=data.flat.correct,
    )
    result.metrics = lane_metrics(result, data, sums)
    return result


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

Each array operation of a step hands the GIL between the threads, a fixed cost per step (about
0.35 ms a step per thread measured on the 2-core development machine, whatever the block size):
two threads broke even at about 24k lanes each, and gained about 1.25x at 32k and 1.5x at 64k each.
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
    first_lane: int = 0,
) -> None:
    """The step loop over one block of lanes: fills ``computed`` and ``emitted`` ``(T, lanes)``.

    ``state`` is the policy state of these lanes; ``first_lane`` is the block's first lane
    (error messages name lanes of the whole replay).
    """
    n, m_count, t_max = seq.shape[0], data.meta.num_models, data.t_max
    retry = policy.escalation in RETRYING
    token_only = policy.escalation == "retry_token"  # the next position stays with the escalating model
    lengths = data.lengths[seq]
    model = np.full(n, policy.initial_model, np.int64)
    base = seq * m_count
    idx = np.empty(n, np.int64)
    k = int(data.meta.k)
    vocab = int(data.meta.vocab_size)
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
        entropy = data.entropy[t].reshape(-1).take(idx, mode="wrap")
        logprobs = token_ids = None
        if with_topk:
            logprobs = data.top_logprobs[t].reshape(-1, k).take(idx, axis=0, mode="wrap")
            token_ids = data.top_ids[t].reshape(-1, k).take(idx, axis=0, mode="wrap")
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
            vocab_size=vocab,
            future=future,
        )
        routes, state = decide_checked(policy, state, step, n, t)
        routes = np.asarray(to_numpy(routes))
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
        if full:
            computed[t] = model
            if retry:
                np.maximum(routes, model, out=emitted[t], casting="unsafe")
            model = np.minimum(routes, model) if token_only else routes
            continue
        computed[t] = np.where(live, model, -1)
        if retry:
            emitted[t] = np.where(live, np.maximum(routes, model), -1)
        model = np.where(live, np.minimum(routes, model) if token_only else routes, model)
    if not retry:  # without retries every position is emitted by the model that computed it
        np.copyto(emitted, computed)
