"""``ead demo``: calibrate policies on the embedded traces, evaluate them live, plot the frontier.

The intended workflow in one job: each policy's threshold is calibrated offline (replay of the
shipped traces, `ead_sdk.simulators.calibrate`) to a target large-model share, then every
policy decodes the held-out demo prompts live with the demo pair and its completions are scored.
The calibration prompts (the traces) and the evaluation prompts are disjoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ead_sdk.specs import load_policy

from . import task
from .learned_router import learned_spec

METRICS = task.METRICS
PAPER_FIGURE = "96.7% of the 11B model's MATH score with the 11B model on 43% of tokens (arXiv 2502.06833)"
"""The EAD paper's headline figure, printed beside the demo's own for scale (a different task and pair)."""


@dataclass(frozen=True)
class DemoPolicy:
    """One row of the demo: a label, a base spec, and the parameter calibrated (if any)."""

    label: str
    spec: dict[str, Any]
    param: str | None = None
    bounds: tuple[float, float] | None = None
    set_to_target: str | None = None  # a parameter set to the target share itself (the budget)


# The entropy rule with per-token retry is also evaluated at these further large shares: the frontier curve.
FRONTIER_TARGETS = (0.1, 0.2, 0.3, 0.55, 0.75)
FRONTIER_POLICY = DemoPolicy(
    "rolling_entropy",
    {"policy": "rolling_entropy", "params": {"window": 1}, "escalation": "retry_token"},
    "threshold",
    (0.0, 8.0),
)


def demo_policies() -> list[DemoPolicy]:
    """The policies ``ead demo`` compares, baselines first."""
    return [
        DemoPolicy("small only", {"policy": "fixed", "params": {"model": 0}}),
        DemoPolicy("large only", {"policy": "fixed", "params": {"model": 1}}),
        # One seed for every lane: all lanes draw at the same positions, so p is calibrated like a threshold.
        DemoPolicy("random", {"policy": "random", "params": {"seed": 0}}, "p", (0.0, 1.0)),
        DemoPolicy("confidence", {"policy": "confidence", "escalation": "retry_token"}, "threshold", (0.0, 1.0)),
        DemoPolicy("rolling_entropy", {"policy": "rolling_entropy", "params": {"window": 2}}, "threshold", (0.0, 8.0)),
        DemoPolicy(
            "rolling_entropy",
            {"policy": "rolling_entropy", "params": {"window": 1}, "escalation": "retry"},
            "threshold",
            (0.0, 8.0),
        ),
        FRONTIER_POLICY,
        DemoPolicy(
            "hysteresis",
            {"policy": "hysteresis", "params": {"lower": 1.0}, "escalation": "retry"},
            "upper",
            (1.05, 8.0),
        ),
        DemoPolicy(
            "top_h",
            {"policy": "top_h", "params": {"max_kept": 8, "top_n": 8}, "escalation": "retry_token"},
            "min_mass",
            (0.0, 1.0),
        ),
        DemoPolicy("cost_budget", {"policy": "cost_budget", "params": {"mode": "hard"}}, set_to_target="budget"),
        DemoPolicy("learned", learned_spec(), "threshold", (0.0, 1.0)),  # python -m ead_sdk.demo.learned_router
    ]


@dataclass
class Calibrated:
    """A policy spec after calibration, with the replayed shares that justified it."""

    label: str
    spec: dict[str, Any]
    target: float
    source: DemoPolicy
    param: str | None = None
    value: float | None = None
    traces_large_share: float | None = None
    held_out_large_share: float | None = None


def calibrate_policies(traces: Any, target: float, policies: list[DemoPolicy] | None = None) -> list[Calibrated]:
    """Calibrate each demo policy on ``traces`` (a `TraceSet`) to large share ``target``."""
    from ead_sdk.simulators import calibrate, replay

    out = []
    for dp in policies or demo_policies():
        spec = json.loads(json.dumps(dp.spec))
        spec.setdefault("params", {})
        if dp.set_to_target:
            spec["params"][dp.set_to_target] = target
        cal = Calibrated(dp.label, spec, target, dp)
        policy = load_policy(spec)
        if dp.param is not None:
            res = calibrate(traces, policy, dp.param, target_large_share=target, bounds=dp.bounds)
            cal.spec, cal.param, cal.value = res.policy.spec(), dp.param, float(res.value)
            cal.traces_large_share, cal.held_out_large_share = float(res.calibration), float(res.held_out)
        else:
            cal.spec = policy.spec()
            cal.traces_large_share = float(replay(traces, policy).report().large_share)
        out.append(cal)
    return out


@dataclass
class DemoRow:
    """One policy's live figures."""

    label: str
    escalation: str
    setting: str
    target: float | None
    quality: dict[str, float]
    large_share: float
    cost_ratio: float
    switches_per_1k: float
    traces_large_share: float | None
    seconds: float
    spec: dict[str, Any] = field(default_factory=dict)
    frontier: bool = False  # a point of the curve policy's run over several large shares
    curve_only: bool = False  # evaluated only for that curve (at a share other than the demo's target)
    share_of_large: dict[str, float] = field(default_factory=dict)
    gap_recovered: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of_run(
        cls, label: str, spec: dict[str, Any], setting: str, score: Any, seconds: float, **extra: Any
    ) -> DemoRow:
        """The row of one live run (a `LiveScore`): its quality and what its routing cost."""
        rep = score.report
        return cls(
            label=label,
            escalation=spec.get("escalation", "next"),
            setting=setting,
            quality=score.quality,
            large_share=rep.large_share,
            cost_ratio=rep.cost_ratio,
            switches_per_1k=1000.0 * rep.switches / max(rep.tokens, 1),
            seconds=seconds,
            spec=spec,
            **extra,
        )


def relative_measures(rows: list[DemoRow]) -> None:
    """Fill each row's quality as a share of large-only's, and the share of the small-large gap recovered."""
    small = next(r for r in rows if r.label == "small only").quality
    large = next(r for r in rows if r.label == "large only").quality
    for r in rows:
        for m in METRICS:
            r.share_of_large[m] = r.quality[m] / large[m] if large[m] else float("nan")
            gap = large[m] - small[m]
            r.gap_recovered[m] = (r.quality[m] - small[m]) / gap if gap else float("nan")


def _setting(cal: Calibrated) -> str:
    params = cal.spec.get("params", {})
    if cal.param is not None:
        return f"{cal.param}={cal.value:.3g}"
    keys = [k for k in ("model", "p", "budget") if k in params]
    return ", ".join(f"{k}={params[k]}" for k in keys)


DEFAULT_PROMPTS = 60
"""Held-out prompts ``ead demo`` evaluates by default (``--prompts 200`` is the full held-out set)."""
FULL_PROMPTS = 200


def default_workers() -> int:
    """Processes the live evaluation uses: one per core, at most 2 (each runs torch on one thread)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores))


def _machine(backend: Any, threads: int) -> dict[str, Any]:
    """Where the demo ran: platform, torch version, threads and device."""
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": threads,
        "device": str(backend.device),
    }


def run_demo(
    n: int = DEFAULT_PROMPTS,
    *,
    target: float = 0.4,
    batch: int = 2,
    max_new_tokens: int = 48,
    frontier: tuple[float, ...] = FRONTIER_TARGETS,
    traces: str | Path | None = None,
    threads: int | None = None,
    workers: int | None = None,
    on_start: Callable[[str, int], None] | None = None,
    on_progress: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Calibrate on the traces, evaluate every demo policy live on ``n`` prompts, return the figures.

    Every policy is calibrated to large share ``target``; the entropy rule with retry_token is also run at
    each share in ``frontier`` (rows marked ``"frontier": True``) to trace its quality/cost curve.
    The policies' live runs are shared among ``workers`` processes (default `default_workers`).

    ``on_start(label, prompts)`` is called as each policy starts, ``on_progress(k, label)`` as its
    batches finish (``k`` prompts more).
    """
    from ead_sdk.traces import read_traces

    from .live_eval import evaluate_live, load_backend, set_threads
    from .record_traces import default_traces_path

    t0 = time.perf_counter()
    used_threads = set_threads(threads)
    trace_path = Path(traces) if traces is not None else default_traces_path()
    trace_set = read_traces(trace_path)
    calibrated = calibrate_policies(trace_set, target)
    extra = [c for t in frontier if t != target for c in calibrate_policies(trace_set, t, [FRONTIER_POLICY])]
    t_cal = time.perf_counter() - t0
    backend = load_backend()
    prompts = task.load_eval_prompts(n)
    jobs, labels = calibrated + extra, _job_labels(calibrated + extra, extra)
    used_workers = min(workers or default_workers(), len(jobs))
    options = {"batch": batch, "max_new_tokens": max_new_tokens}
    if used_workers > 1:
        runs = _evaluate_in_processes(jobs, labels, n, options, used_threads, used_workers, on_start, on_progress)
    else:
        runs = []
        for cal, label in zip(jobs, labels, strict=True):
            if on_start is not None:
                on_start(label, len(prompts))
            start = time.perf_counter()
            progress = None if on_progress is None else (lambda k, label=label: on_progress(k, label))
            score = evaluate_live(backend, load_policy(cal.spec), prompts, progress=progress, **options)
            runs.append((score, time.perf_counter() - start))
    rows = [
        DemoRow.of_run(
            cal.label,
            cal.spec,
            _setting(cal),
            score,
            seconds,
            target=None if cal.label in ("small only", "large only") else cal.target,
            traces_large_share=cal.traces_large_share,
            frontier=cal.source is FRONTIER_POLICY,
            curve_only=cal in extra,
        )
        for cal, (score, seconds) in zip(jobs, runs, strict=True)
    ]
    relative_measures(rows)
    return {
        "task": "complete the held-out line (ead_sdk.demo.task, cut='half'), greedy, stop at newline",
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch": batch,
        "target_large_share": target,
        "frontier": [t for t in frontier if t != target],
        "traces": str(trace_path),
        "trace_sequences": len(trace_set),
        "models": list(backend.model_names),
        "param_counts": list(backend.param_counts),
        "machine": {**_machine(backend, used_threads), "workers": used_workers},
        "seconds": {"calibration": t_cal, "total": time.perf_counter() - t0},
        "rows": [r.__dict__ for r in rows],
    }


def _job_labels(jobs: list[Calibrated], extra: list[Calibrated]) -> list[str]:
    """Progress labels: the policy, its escalation, and the share of a curve-only run."""
    return [
        f"{c.label} ({c.spec.get('escalation', 'next')})" + (f" at {c.target:g}" if c in extra else "") for c in jobs
    ]


def _evaluate_in_processes(
    jobs: list[Calibrated],
    labels: list[str],
    n: int,
    options: dict[str, Any],
    threads: int,
    workers: int,
    on_start: Callable[[str, int], None] | None,
    on_progress: Callable[[int, str], None] | None,
) -> list[tuple[Any, float]]:
    """Evaluate each job's policy in a pool of ``workers`` processes, relaying their progress here."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch state forked mid-use
    events = ctx.Queue()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(events, threads)) as pool:
        futures = [pool.submit(_worker_run, i, job.spec, n, options) for i, job in enumerate(jobs)]
        pending = set(futures)
        while pending:
            _relay(events, labels, n, on_start, on_progress, queue_mod)
            _, pending = wait(pending, timeout=0.2)
        _relay(events, labels, n, on_start, on_progress, queue_mod)
        return [f.result() for f in futures]


def _relay(events: Any, labels: list[str], n: int, on_start: Any, on_progress: Any, queue_mod: Any) -> None:
    while True:
        try:
            kind, job, k = events.get_nowait()
        except queue_mod.Empty:
            return
        if kind == "start" and on_start is not None:
            on_start(labels[job], n)
        elif kind == "progress" and on_progress is not None:
            on_progress(k, labels[job])


_WORKER: dict[str, Any] = {}


def _worker_init(events: Any, threads: int) -> None:
    """A pool process: one torch thread, the demo pair loaded once."""
    from .live_eval import load_backend, set_threads

    set_threads(threads)
    _WORKER.update(events=events, backend=load_backend())


def _worker_run(job: int, spec: dict[str, Any], n: int, options: dict[str, Any]) -> tuple[Any, float]:
    from .live_eval import evaluate_live

    events = _WORKER["events"]
    events.put(("start", job, 0))
    start = time.perf_counter()
    score = evaluate_live(
        _WORKER["backend"],
        load_policy(spec),
        task.load_eval_prompts(n),
        progress=lambda k: events.put(("progress", job, k)),
        **options,
    )
    return score, time.perf_counter() - start


def best_row(figures: dict[str, Any], metric: str = "soft", max_share: float = 0.4) -> dict[str, Any] | None:
    """The routed row with the most gap recovered on ``metric`` among those with large share <= ``max_share``."""
    rows = [
        r for r in figures["rows"] if r["label"] not in ("small only", "large only") and r["large_share"] <= max_share
    ]
    return max(rows, key=lambda r: r["gap_recovered"][metric], default=None)


def plot_frontier(figures: dict[str, Any], path: str | Path) -> Path:
    """Write the quality/cost plot: each metric's gap recovered against the large model's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["rows"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(15, 5), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="random mixing")
        curve = sorted((r for r in rows if r.get("frontier")), key=lambda r: r["large_share"])
        if curve:
            ax.plot(
                [r["large_share"] for r in curve],
                [r["gap_recovered"][metric] for r in curve],
                color="tab:blue",
                lw=1.2,
                label="rolling_entropy (retry_token) at several targets",
            )
        for r in rows:
            if r.get("curve_only"):
                ax.scatter(r["large_share"], r["gap_recovered"][metric], marker="^", s=20, color="tab:blue", zorder=3)
                continue
            marker = "s" if r["label"] in ("small only", "large only") else ("o" if r["escalation"] == "next" else "^")
            ax.scatter(r["large_share"], r["gap_recovered"][metric], marker=marker, s=50, zorder=3)
            ax.annotate(
                f"{r['label']}" + ("" if r["escalation"] == "next" else f" ({r['escalation']})"),
                (r["large_share"], r["gap_recovered"][metric]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
            )
        ax.set_xlim(-0.03, 1.05)
        ax.set_ylim(min(-0.2, min(r["gap_recovered"][metric] for r in rows) - 0.05), 1.25)
        ax.set_xlabel("large model's share of emitted tokens")
        ax.set_title(f"{metric}: small {rows[0]['quality'][metric]:.3f}, large {rows[1]['quality'][metric]:.3f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of the small-to-large quality gap recovered")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"ead demo: live greedy completion of {figures['prompts']} held-out lines: share of the small-to-large "
        f"quality gap recovered against the large model's share of tokens (triangles: retry or retry_token)\n"
        f"for scale, the EAD paper (another task and model pair): {PAPER_FIGURE}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
