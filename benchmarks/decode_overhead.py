"""Overhead of the live decoder on a pair of random-initialised Llama models (no downloads).

Four figures, each measured in one run side by side (best of ``--repeats``):

1. ``hf_throughput_ratio``: tokens/s of the always-large policy through `ead_sdk.generate`
   divided by tokens/s of ``large.generate(do_sample=False)`` on the same prompts and counts.
2. ``policy_overhead``: the share of decode wall-clock spent computing entropies and in
   ``policy.decide`` (rolling_entropy), with the switching policy.
3. ``realised_vs_strict_ideal``: the switching policy's wall-clock speed-up over large-only
   through the same loop, divided by the strict ideal where catch-up passes are free (only the
   decode passes, emitted and wasted tokens, cost, at each model's measured seconds per decode
   token): the headline. Beside it, ``realised_vs_measured_ideal`` divides by the ideal
   ``1 / cost_ratio`` with measured seconds per token where every catch-up token also costs a
   decode step. The parameter-count ideal of the cost report is printed for reference only: on
   these small models it is far below what is reachable, so a ratio against it says little.
4. ``time_prediction_error``: the speed-up over large-only that `CostModel.measure` (each model's
   decode step and catch-up pass timed on this machine, at this batch size) predicts from the
   switching run's report alone, against the realised speed-up of 3.; also the prediction from
   both runs' reports. Printed as ``predicted/realised - 1`` just before the last line. The
   measurement runs one round between each of the race's rounds (the median of them kept), so
   both see the same load.

The always-large run must emit exactly ``large.generate``'s tokens, or the script fails.
Runs on CUDA when present, else CPU (one thread unless ``--threads``). Prints one line last:
``hf_throughput_ratio=<a> policy_overhead=<b> realised_vs_strict_ideal=<c> realised_vs_measured_ideal=<d>``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ead_sdk.backends.hf as hf
from ead_sdk import CostModel, generate
from ead_sdk.backends.hf import TransformersBackend
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.signals import entropy
from ead_sdk.timing import combine_timings, measure_forward_times


def model(hidden: int, layers: int, vocab: int, seed: int) -> Any:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3),
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 2),
        num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def race(repeats: int, fns: dict[str, Any], device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Best wall-clock time of each function, run round-robin so that load drifts hit all alike."""
    best = dict.fromkeys(fns, float("inf"))
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            outs[name] = fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


class Timed:
    """Wrap a callable and add up its wall-clock time (synchronising on CUDA)."""

    def __init__(self, fn: Any, device: torch.device):
        self.fn, self.device, self.total = fn, device, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sync(self.device)
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        sync(self.device)
        self.total += time.perf_counter() - t0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = model(128, 2, args.vocab, seed=1).to(device)
    large = model(512, 8, args.vocab, seed=2).to(device)
    backend = TransformersBackend([small, large], device=device, names=["small", "large"], eos_token_id=[])
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, args.vocab, size=(args.batch, args.prompt_len)).tolist()
    n_new = args.new_tokens
    counts = backend.param_counts
    print(f"device={device} threads={args.threads} params small={counts[0]:,} large={counts[1]:,}")
    print(f"batch={args.batch} prompt_len={args.prompt_len} new_tokens={n_new} repeats={args.repeats}")

    # 1. always-large through our loop vs transformers' own greedy generate.
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)

    def hf_generate(m: Any) -> Any:
        with torch.inference_mode():
            return m.generate(
                ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, eos_token_id=None
            )

    def ours(policy: Any) -> Any:
        return generate(backend, policy, prompts, max_new_tokens=n_new)

    hf_generate(large), ours(FixedPolicy(model=1))  # warm-up
    switching = RollingEntropyPolicy(window=4, threshold=median_entropy(small, ids, backend.vocab_size), unit="nats")
    rounds: list[Any] = []  # 4.: one measurement round between the race's rounds, under the same load

    def measure_round() -> None:
        rounds.append(
            measure_forward_times(
                backend, batch=args.batch, prompt_len=args.prompt_len, repeats=1, warmup=0, policy=switching
            )
        )

    measure_round()  # warm-up
    rounds.clear()
    times, outs = race(
        args.repeats,
        {
            "hf": lambda: hf_generate(large),
            "large": lambda: ours(FixedPolicy(model=1)),
            "small": lambda: ours(FixedPolicy(model=0)),
            "switch": lambda: ours(switching),
            "measure": measure_round,
        },
        device,
    )
    t_hf, t_large, t_small, t_switch = times["hf"], times["large"], times["small"], times["switch"]
    ref, out_large, out = outs["hf"], outs["large"], outs["switch"]
    same = all(list(lane.tokens) == ref[i, args.prompt_len :].tolist() for i, lane in enumerate(out_large))
    tokens = args.batch * n_new
    ratio = t_hf / t_large
    print(f"large via transformers.generate: {tokens / t_hf:9.1f} tok/s")
    print(f"large via ead_sdk.generate:      {tokens / t_large:9.1f} tok/s  (same tokens: {same})")
    print(f"small via ead_sdk.generate:      {tokens / t_small:9.1f} tok/s")
    if not same:
        raise SystemExit("the always-large run through ead_sdk.generate emitted other tokens than large.generate")

    # 2. the share of a switching run spent in entropy + policy (timed in a separate run).
    original = hf.entropy_of
    timed_entropy = Timed(original, device)
    timed_decide = Timed(switching.decide, device)
    ours(switching)  # warm-up
    hf.entropy_of = timed_entropy
    switching.decide = timed_decide  # type: ignore[method-assign]
    try:
        t_timed, _ = race(1, {"timed": lambda: ours(switching)}, device)
        t_timed = t_timed["timed"]
    finally:
        hf.entropy_of = original
        del switching.decide
    overhead = (timed_entropy.total + timed_decide.total) / t_timed
    # 3. realised speed-up of the switching run over large-only, against the ideal.
    seconds = CostModel.from_seconds_per_token([t_small / tokens, t_large / tokens])
    ideal = 1.0 / _cost_ratio(out, seconds)
    ideal_params = 1.0 / out.report.cost_ratio
    # Free catch-up: only the decode passes (emitted + wasted tokens) cost, at measured s/token.
    passes = np.asarray(out.report.emitted) + np.asarray(out.report.wasted)
    ideal_passes = t_large / float((passes * np.asarray(seconds.costs)).sum())
    realised = t_large / t_switch
    print(
        f"switching: large_share={out.report.large_share:.3f} switches={out.report.switches} "
        f"catch-up forwards={out.report.catchup}"
    )
    print(f"entropy {timed_entropy.total * 1e3:.1f} ms + decide {timed_decide.total * 1e3:.1f} ms of one run")
    print(
        f"speed-up over large-only: realised {realised:.3f}; ideal 1/cost_ratio: param counts "
        f"{ideal_params:.3f}, measured s/token {ideal:.3f}, measured s/token with free catch-up {ideal_passes:.3f}"
    )
    print(f"realised / strict ideal (free catch-up): {realised / ideal_passes:.3f}")
    time_prediction(combine_timings(rounds), out, outs["large"], (t_large, t_switch))
    print(
        f"hf_throughput_ratio={ratio:.3f} policy_overhead={overhead:.4f} "
        f"realised_vs_strict_ideal={realised / ideal_passes:.3f} realised_vs_measured_ideal={realised / ideal:.3f}"
    )


def time_prediction(timings: Any, switched: Any, large_only: Any, seconds: tuple[float, float]) -> None:
    """4. The measured cost model's predicted speed-up against the realised one (printed last)."""
    measured = timings.cost_model()
    for name, step, base, per_token in zip(
        timings.names, timings.step, timings.catchup_pass, timings.per_token, strict=True
    ):
        print(
            f"measured {name}: decode step {step * 1e3:.2f} ms; a pass of 1 + k tokens "
            f"{base * 1e3:.2f} ms + k x {per_token * 1e3:.3f} ms"
        )
    print(f"measured loop overhead per step (policy, bookkeeping, sync): {measured.step_overhead * 1e3:.3f} ms")
    print(f"(median of {timings.samples} measurement rounds taken between the race's rounds, batch {timings.batch})")
    realised = seconds[0] / seconds[1]
    for name, res, took in (("large-only", large_only, seconds[0]), ("switching", switched, seconds[1])):
        print(f"{name}: predicted {measured.predict_seconds(res.report):.3f} s, realised {took:.3f} s (best run)")
    from_run = measured.predicted_speedup(switched.report)
    from_both = measured.predict_seconds(large_only.report) / measured.predict_seconds(switched.report)
    print(
        f"speed-up over large-only: realised {realised:.3f}; predicted by the measured cost model from the "
        f"switching run's report {from_run:.3f}, from both runs' reports {from_both:.3f}"
    )
    print(f"time_prediction_error={from_run / realised - 1:+.3f} (both reports: {from_both / realised - 1:+.3f})")


def median_entropy(small: Any, ids: Any, vocab: int) -> float:
    """The small model's median entropy over the prompts: a threshold that switches often."""
    with torch.inference_mode():
        logits = small(input_ids=ids).logits[..., :vocab].float()
    return float(entropy(logits).median())


def _cost_ratio(result: Any, cost_model: CostModel) -> float:
    """The result's cost ratio under another cost model (forwards are what the ledger counted)."""
    forwards = np.asarray(result.report.forwards, float)
    cost = float((forwards * np.asarray(cost_model.costs)).sum())
    return cost / (cost_model.costs[-1] * result.report.tokens)


if __name__ == "__main__":
    main()
