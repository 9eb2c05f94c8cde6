"""Top-H kept sets: our vectorised `top_h_kept` against the reference's per-token loop.

Both run on the same logits in the same process (torch, CPU, one thread unless --threads).
The baseline re-implements the authors' loop (ErfanBaghaei/Top-H-Decoding, logit_processor.py)
step for step: softmax, top-N, the threshold from the normalised top-N entropy, then one Python
iteration per kept token with tensor arithmetic and a comparison that reads the tensor on the
host. Its mask building and logits filtering are left out (they only favour the baseline).
Both are timed with the same number of repeats per trial (``--repeats``, best of each). The
script fails if any kept-set size differs from the reference's, and prints, last,
``toph_speedup=<x>``.

    python benchmarks/top_h.py [--alpha 0.95] [--vocab 32000] [--batch 1] [--trials 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ead_sdk.policies.top_h import top_h_kept


def reference_loop(scores: torch.Tensor, alpha: float, top_n: int = 100) -> tuple[int, float]:
    """The authors' per-token loop on one row (batch 1): kept-set size and mass."""
    probs = F.softmax(scores, dim=-1)
    top_p, top_i = torch.topk(probs[0], top_n, largest=True, sorted=True)
    total = top_p.sum()
    normed = top_p / torch.sum(top_p)
    tau = ((-torch.sum(normed * torch.log2(normed)) - torch.log2(total)) * total - 0.0) * alpha
    valid = []
    ind = 1
    sigma = top_p[0]
    h = -top_p[0] * torch.log2(top_p[0])
    for idx, _prob in zip(top_i, top_p, strict=True):
        valid.append(idx)
        ind += 1
        if ind - 1 >= top_n:  # the reference would index past its top-N here and crash
            break
        h -= top_p[ind - 1] * torch.log2(top_p[ind - 1])
        sigma += top_p[ind - 1]
        entropy_diff = (h / sigma) + torch.log2(sigma)
        if entropy_diff > (tau / sigma + torch.log2(sigma)):
            break
    return len(valid), float(top_p[: len(valid)].sum())


def best_of(fn, repeat: int) -> float:
    """The fastest of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.95)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per trial for each side (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    # Logits shaped like a language model's: a few strong candidates over a long flat tail.
    scale = torch.empty(args.trials, 1).uniform_(1.0, 4.0, generator=gen)
    logits = torch.randn(args.trials, args.batch, args.vocab, generator=gen) * scale[:, :, None]

    mismatches = 0
    for t in range(args.trials):
        ours = top_h_kept(logits[t], args.alpha, 100)
        for b in range(args.batch):
            size, _ = reference_loop(logits[t, b : b + 1], args.alpha)
            mismatches += int(ours.size[b]) != size

    if mismatches:
        raise SystemExit(f"top_h_kept and the reference loop keep different set sizes in {mismatches} rows")
    # Interleaved, trial by trial, so both see the same load on a shared machine; the best of
    # the same number of repeats of each call filters out preemptions.
    top_h_kept(logits[0], args.alpha, 100)  # warm up
    ours_t, ref_t = [], []
    for t in range(args.trials):
        row = logits[t]
        ours_t.append(best_of(lambda row=row: top_h_kept(row, args.alpha, 100), args.repeats))
        ref_t.append(
            best_of(lambda row=row: [reference_loop(row[b : b + 1], args.alpha) for b in range(len(row))], args.repeats)
        )
    ours_s, ref_s = statistics.median(ours_t), statistics.median(ref_t)
    sizes = torch.stack([top_h_kept(logits[t], args.alpha, 100).size for t in range(args.trials)]).float()
    print(
        f"top_h alpha={args.alpha} vocab={args.vocab} batch={args.batch} trials={args.trials} "
        f"threads={args.threads} repeats={args.repeats} (each side)"
    )
    print(f"mean kept-set size: {sizes.mean().item():.1f} tokens; size mismatches vs reference: {mismatches}")
    print(f"reference per-token loop: {ref_s * 1e6:9.1f} us per call (median over trials)")
    print(f"ead_sdk top_h_kept:       {ours_s * 1e6:9.1f} us per call (median over trials)")
    print(f"toph_speedup={ref_s / ours_s:.1f}")


if __name__ == "__main__":
    main()
