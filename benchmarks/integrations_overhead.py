"""Overhead of the transformers integrations on random-initialised Llama models (no downloads).

Two figures, each measured in one run side by side. The machine is shared, so every trial times
each variant once, round-robin, and a figure is the median over ``--repeats`` trials of the
within-trial ratio (its spread is printed too):

1. ``observer_overhead``: wall-clock of ``large.generate`` with a `PolicyObserver` in its
   logits processors (rolling_entropy; ``finish`` included) divided by the same call without
   it, minus 1 (same prompts, greedy, identical ids checked).
2. ``custom_generate_ratio``: wall-clock of ``large.generate(custom_generate=ead_generate, ...)``
   divided by `ead_sdk.generate` over a `TransformersBackend` built once, same models and policy
   (identical tokens checked): what going through transformers' ``generate`` costs on top.

Runs on CUDA when present, else CPU (one thread unless ``--threads``). Prints one line last:
``observer_overhead=<a> custom_generate_ratio=<b>``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

import ead_sdk
from ead_sdk.backends.hf import TransformersBackend
from ead_sdk.integrations import PolicyObserver, ead_generate


def model(hidden: int, layers: int, vocab: int, seed: int, device: str) -> Any:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(cfg).eval().to(device)


def trials(fns: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None]) -> dict[str, np.ndarray]:
    """Seconds per variant per trial; each trial runs every variant once, round-robin."""
    times = {k: np.zeros(repeats) for k in fns}
    for r in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k][r] = time.perf_counter() - t0
    return times


def spread(ratio: np.ndarray) -> str:
    return f"median {np.median(ratio):.4f} (min {ratio.min():.4f}, max {ratio.max():.4f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = model(128, 2, args.vocab, 1, device)
    large = model(512, 8, args.vocab, 2, device)
    spec = {"policy": "rolling_entropy", "params": {"window": 4, "threshold": 2.0, "unit": "nats"}}
    policy = ead_sdk.load_policy(spec)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, 16), generator=gen).to(device)
    kw = dict(max_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=[])
    backend = TransformersBackend([small, large], eos_token_id=[])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    observer = PolicyObserver(policy, model=large, model_index=1)
    out: dict[str, Any] = {}

    def plain() -> None:
        out["plain"] = large.generate(ids, **kw)

    def observed() -> None:
        out["observed"] = large.generate(ids, logits_processor=LogitsProcessorList([observer]), **kw)
        out["seen"] = observer.finish(out["observed"])

    def via_transformers() -> None:
        out["custom"] = large.generate(
            ids,
            custom_generate=ead_generate,
            ead_policy=spec,
            ead_models=[small],
            max_new_tokens=args.new,
            eos_token_id=[],
            pad_token_id=0,
        )

    def direct() -> None:
        out["direct"] = ead_sdk.generate(backend, policy, ids.tolist(), max_new_tokens=args.new)

    fns = {"plain": plain, "observed": observed, "custom": via_transformers, "direct": direct}
    trials(fns, 1, sync)  # warm-up
    t = trials(fns, args.repeats, sync)
    assert torch.equal(out["plain"], out["observed"]), "the observer changed generate's output"
    assert out["custom"][:, ids.shape[1] :].tolist() == [list(lane.tokens) for lane in out["direct"]]
    tokens = args.batch * args.new
    share = sum(int((lane.routes != 1).sum()) for lane in out["seen"]) / tokens
    med = {k: float(np.median(v)) for k, v in t.items()}
    observer = t["observed"] / t["plain"] - 1
    custom = t["custom"] / t["direct"]
    print(f"device={device} batch={args.batch} new={args.new} vocab={args.vocab} trials={args.repeats}")
    print(f"large.generate            {med['plain']:.4f} s  {tokens / med['plain']:.1f} tok/s")
    print(
        f"  + PolicyObserver        {med['observed']:.4f} s  {tokens / med['observed']:.1f} tok/s"
        f"  (would route {share:.3f} of next tokens to the small model)"
    )
    print(f"ead_sdk.generate          {med['direct']:.4f} s  (large share {out['direct'].report.large_share:.3f})")
    print(f"generate(custom_generate) {med['custom']:.4f} s")
    print(f"observer overhead per trial: {spread(observer)}")
    print(f"custom_generate / direct per trial: {spread(custom)}")
    print(f"observer_overhead={np.median(observer):.4f} custom_generate_ratio={np.median(custom):.4f}")


if __name__ == "__main__":
    main()
