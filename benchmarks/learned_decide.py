"""The learned policy's ``decide`` cost per token against ``rolling_entropy``'s, side by side in one run.

Both policies decide on the same steps (a full-vocabulary distribution per lane, as in live
decoding with ``logprobs="full"``, and a top-k, as in replay or with ``logprobs=k``), at batch 1
and 64, on torch (CPU unless --device) and numpy. For scale, the last column times what the
decoder itself computes on the same full rows at every step anyway: their entropy. Times are
the median of ``--repeat`` rounds of ``--steps`` decisions each, interleaved
so that a shared machine's load hits both alike; the figure to read is the ratio.

    python benchmarks/learned_decide.py [--vocab 32000] [--steps 200] [--repeat 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ead_sdk.interface import Step
from ead_sdk.policies.learned import LearnedPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.router import FeatureSpec, RouterNetwork


def router(hidden: int) -> dict:
    spec = FeatureSpec(k=8, window=4)
    rng = np.random.default_rng(0)
    layers = [
        (rng.normal(size=(spec.width, hidden)), rng.normal(size=hidden)),
        (rng.normal(size=(hidden, 1)), np.zeros(1)),
    ]
    return RouterNetwork(spec, tuple(layers)).to_json()


def steps(batch: int, vocab: int, xp: str, device: str, topk: bool, count: int) -> list[Step]:
    gen = torch.Generator().manual_seed(batch)
    out = []
    for t in range(count):
        logits = torch.randn(batch, vocab, generator=gen) * 3
        lp = torch.log_softmax(logits, -1)
        ent = -(lp.exp() * lp).sum(-1)
        top = torch.topk(lp, 8, dim=-1)
        fields = {
            "entropy": ent,
            "model": torch.zeros(batch, dtype=torch.int64),
            "index": torch.full((batch,), t, dtype=torch.int64),
            "live": torch.ones(batch, dtype=torch.bool),
            "logprobs": top.values if topk else logits,
            "token_ids": top.indices if topk else None,
        }
        if xp == "numpy":
            fields = {k: None if v is None else v.numpy() for k, v in fields.items()}
        else:
            fields = {k: None if v is None else v.to(device) for k, v in fields.items()}
        out.append(Step(**fields, vocab_size=vocab))
    return out


def per_token(policy, stream: list[Step], xp, device) -> float:
    state = policy.init_state(stream[0].n, xp, device=None if xp is np else device)
    start = time.perf_counter()
    for step in stream:
        _, state = policy.decide(state, step)
    if xp is torch and device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(stream)


def entropy_per_step(stream: list[Step]) -> float:
    """Seconds per step of the decoder's own entropy of the full rows (the backend's `entropy_of`)."""
    start = time.perf_counter()
    for step in stream:
        torch.special.entr(torch.softmax(step.logprobs, -1)).sum(-1)
    return (time.perf_counter() - start) / len(stream)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    learned = LearnedPolicy(threshold=0.5, router=router(args.hidden), escalation="retry_token")
    rolling = RollingEntropyPolicy(window=1, threshold=2.0, escalation="retry_token")
    print(f"learned: {learned!r}; rolling_entropy window 1; vocab {args.vocab}; torch {torch.__version__}")
    print(
        "| namespace | signal | batch | rolling_entropy (us/step) | learned (us/step) | ratio "
        "| decoder's entropy (us/step) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for xp_name, xp in (("torch", torch), ("numpy", np)):
        for topk in (False, True):
            if xp is np and not topk:
                continue  # replay passes a trace's top-k; a full vocabulary on numpy is not a use case
            for batch in (1, 64):
                stream = steps(batch, args.vocab, xp_name, args.device, topk, args.steps)
                a, b, c = [], [], []
                for _ in range(args.repeat):  # interleaved: load on a shared machine hits all alike
                    a.append(per_token(rolling, stream, xp, args.device))
                    b.append(per_token(learned, stream, xp, args.device))
                    if xp is torch and not topk:
                        c.append(entropy_per_step(stream))
                ra, rb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
                rc = f"{statistics.median(c) * 1e6:.1f}" if c else "-"
                signal = "top-8" if topk else f"full ({args.vocab})"
                print(f"| {xp_name} | {signal} | {batch} | {ra:.1f} | {rb:.1f} | {rb / ra:.2f} | {rc} |")


if __name__ == "__main__":
    main()
