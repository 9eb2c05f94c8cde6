"""Replay throughput: a 64-configuration sweep over 1,000 x 1,000 synthetic tokens, two policies.

For ``rolling_entropy`` and ``hysteresis`` it times one batched `replay` of all 64 configurations
(64,000 lanes, routes + CostLedger + metrics) on ``--threads`` threads (default: `replay`'s own
default) and on one thread, and, on the same trace in the same run, the same
decisions made by a straightforward per-token Python loop (plain-Python rule, one configuration
and one sequence at a time: what a research script does). The naive loop is timed on a subset
and its rate extrapolated; its routes are checked equal to the batched ones on that subset.
Beside it, a loop that calls the SDK's policy object once per lane and token (far slower than
the plain rule, so its ratio is much larger) is timed on a smaller subset.

Prints, last, each the lower of the two policies': ``speedup_vs_plain_python=<x>`` (against the
plain-Python rule loop, the headline), ``speedup_vs_policy_object_loop=<y>`` and
``decisions_per_s=<z>``.

    python benchmarks/replay_throughput.py [--sequences 1000] [--tokens 1000] [--naive-sequences 40]
        [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import deque

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ead_sdk.policies.hysteresis import HysteresisPolicy  # noqa: E402
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy  # noqa: E402
from ead_sdk.simulators import LocalEngine, replay, synthetic_traces  # noqa: E402
from ead_sdk.simulators.replay import ReplayData, default_threads  # noqa: E402


def rolling_configs() -> list[dict]:
    return [{"window": w, "threshold": float(th)} for w in range(1, 9) for th in np.linspace(0.4, 2.2, 8)]


def hysteresis_configs() -> list[dict]:
    return [
        {"upper": float(up), "lower": float(up * f), "window": 3}
        for up in np.linspace(0.6, 2.4, 8)
        for f in np.linspace(0.2, 0.9, 8)
    ]


def naive_rolling(entropy: np.ndarray, cfg: dict) -> list[int]:
    """EAD's rule, one token at a time (the trajectory's entropies under the current model)."""
    hist: deque[float] = deque(maxlen=cfg["window"])
    model, out = 0, []
    for t in range(entropy.shape[0]):
        out.append(model)
        hist.append(float(entropy[t, model]))
        model = 1 if sum(hist) / len(hist) > cfg["threshold"] else 0
    return out


def naive_hysteresis(entropy: np.ndarray, cfg: dict) -> list[int]:
    """Hysteresis on the window mean: up above ``upper``, down below ``lower``."""
    hist: deque[float] = deque(maxlen=cfg["window"])
    model, out = 0, []
    for t in range(entropy.shape[0]):
        out.append(model)
        hist.append(float(entropy[t, model]))
        mean = sum(hist) / len(hist)
        if mean > cfg["upper"]:
            model = 1
        elif mean < cfg["lower"]:
            model = 0
    return out


def policy_loop(entropy: np.ndarray, policy) -> list[int]:
    """The SDK's own policy object, one lane and one token at a time (no batching)."""
    from ead_sdk import Step

    state = policy.init_state(1, np)
    model, out = 0, []
    live = np.ones(1, bool)
    for t in range(entropy.shape[0]):
        out.append(model)
        step = Step(entropy=entropy[t, model : model + 1], model=np.array([model]), index=np.array([t]), live=live)
        r, state = policy.decide(state, step)
        model = int(r[0])
    return out


def batched_policy(name: str, configs: list[dict], n: int):
    params = {k: np.repeat(np.asarray([c[k] for c in configs]), n) for k in configs[0]}
    cls = RollingEntropyPolicy if name == "rolling_entropy" else HysteresisPolicy
    return cls(unit="nats", **params)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--naive-sequences", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="replay threads (default: replay's default)")
    args = ap.parse_args()
    n, t_len = args.sequences, args.tokens
    threads = default_threads() if args.threads is None else args.threads

    t0 = time.perf_counter()
    traces = synthetic_traces(n, t_len, k=4, seed=0)
    data = ReplayData.from_traces(traces, with_topk=False)
    print(
        f"trace: {n} sequences x {t_len} tokens, 2 models, k=4 "
        f"(generated and laid out in {time.perf_counter() - t0:.1f} s)"
    )
    entropy = [s.entropy for s in traces.take(range(min(args.naive_sequences, n))).sequences()]
    few = max(1, len(entropy) // 8)  # the policy loop is slow: fewer sequences

    figures = []
    for name, configs, naive in (
        ("rolling_entropy", rolling_configs(), naive_rolling),
        ("hysteresis", hysteresis_configs(), naive_hysteresis),
    ):
        c = len(configs)
        seq = np.tile(np.arange(n), c)
        policy = batched_policy(name, configs, n)
        best = {threads: np.inf, 1: np.inf}
        results = {}
        for _ in range(args.repeats):  # alternate, so that both see the same machine load
            for th in best:
                t0 = time.perf_counter()
                results[th] = replay(data, policy, lane_sequence=seq, with_topk=False, engine=LocalEngine(threads=th))
                best[th] = min(best[th], time.perf_counter() - t0)
        result = results[threads]
        if not (np.array_equal(result.emitted_by, results[1].emitted_by) and result.summary() == results[1].summary()):
            raise SystemExit(f"{name}: {threads} threads and one thread replay differently")
        decisions = c * n * t_len
        fast_rate = decisions / best[threads]
        one_rate = decisions / best[1]

        # Two naive loops on a subset (every configuration, the first sequences):
        # the policy object one lane and one token at a time, and a hand-written plain-Python rule.
        cls = type(policy)
        t0 = time.perf_counter()
        loop_routes = [[policy_loop(e, cls(unit="nats", **cfg)) for e in entropy[:few]] for cfg in configs]
        loop_s = time.perf_counter() - t0
        loop_rate = c * sum(e.shape[0] for e in entropy[:few]) / loop_s
        t0 = time.perf_counter()
        naive_routes = [[naive(e, cfg) for e in entropy] for cfg in configs]
        naive_s = time.perf_counter() - t0
        naive_rate = c * sum(e.shape[0] for e in entropy) / naive_s
        match = all(
            result.routes(j * n + i).tolist() == naive_routes[j][i]
            and (i >= few or loop_routes[j][i] == naive_routes[j][i])
            for j in range(c)
            for i in range(len(entropy))
        )
        summary = result.summary()
        print(
            f"{name}: {c} configs x {n} sequences = {c * n} lanes, {decisions / 1e6:.0f}M decisions "
            f"in {best[threads]:.2f} s on {threads} thread(s) (routes + CostLedger + metrics) -> "
            f"{fast_rate / 1e6:.1f}M decisions/s (one thread: {best[1]:.2f} s, {one_rate / 1e6:.1f}M/s); "
            f"plain-Python rule loop {naive_rate / 1e6:.2f}M decisions/s (speedup {fast_rate / naive_rate:.1f}x); "
            f"per-token policy-object loop {loop_rate / 1e3:.1f}k decisions/s (speedup {fast_rate / loop_rate:.0f}x); "
            f"routes equal on the subset: {match}; mean large_share {summary['large_share']:.3f}"
        )
        if not match:
            raise SystemExit(f"{name}: batched and naive routes differ")
        figures.append((fast_rate, fast_rate / loop_rate, fast_rate / naive_rate))
    # Each figure for the policy that does worst on it.
    slow_rate, slow_speedup, slow_plain = (min(f[i] for f in figures) for i in range(3))
    print(
        f"worst of the two policies ({threads} thread(s)): {slow_rate / 1e6:.1f}M decisions/s, "
        f"{slow_plain:.1f}x the plain-Python rule loop, "
        f"{slow_speedup:.0f}x the per-token policy-object loop"
    )
    print(
        f"speedup_vs_plain_python={slow_plain:.1f} speedup_vs_policy_object_loop={slow_speedup:.0f} "
        f"decisions_per_s={slow_rate:.3g}"
    )


if __name__ == "__main__":
    main()
