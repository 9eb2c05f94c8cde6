"""Measure the demo pair on the held-out standard-library files; write ``weights/results.json``.

    python -m ead_sdk.demo.evaluate_pair [--weights DIR] [--prompts 200] [--out FILE]

What is measured (all on the 20 held-out files of :mod:`ead_sdk.demo.task`):

* **Teacher-forced**, over the whole held-out byte stream (windows of 320 bytes, stride 160,
  so every scored byte but the first window's has at least 160 bytes of context): each model's
  bits/byte, next-byte accuracy (argmax = true byte) and the small model's entropy per position.
* **Routing, teacher-forced**: send the X% of positions with the highest small-model entropy to
  the large model (X = 20, 30, 40%) and report the resulting accuracy (and bits/byte) and the
  share of the small-to-large gap it recovers, ``(routed - small) / (large - small)``. Routing
  X% of positions at random recovers X% in expectation. The threshold is the entropy quantile
  on the same stream (a diagnostic, not a calibrated policy).
* **Greedy completion** of the line for the first ``--prompts`` held-out prompts, small only
  and large only, for both cuts of :func:`ead_sdk.demo.task.load_eval_prompts` (``"half"``: the
  prompt ends halfway through the line, the default; ``"line"``: at the line boundary): mean
  exact match, soft score (fraction of the target's bytes matched before the first error) and
  similarity (``difflib`` ratio), with a paired 95% interval of the large - small difference.
* **Live per-token routing** on the ``"half"`` prompts (an illustration, not one of the SDK's policies): greedy decoding
  in which, at every position, the small model's distribution is computed and, if its entropy
  exceeds the teacher-forced threshold of the X% rule, the large model's argmax is emitted
  instead (escalate-and-retry at every token, no hysteresis). Reports quality and the share of
  emitted bytes that came from the large model.

The figures are measured each time this runs; nothing in ``results.json`` is written by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np

from . import task

ROUTE_SHARES = (0.2, 0.3, 0.4)
LN2 = math.log(2)


def load_pair(weights: str | os.PathLike | None = None):
    """``(tokenizer, small, large)`` from ``weights`` (default: the committed weights), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import weights_dir

    w = os.fspath(weights or weights_dir())
    tok = AutoTokenizer.from_pretrained(os.path.join(w, "tokenizer"), local_files_only=True)
    small = AutoModelForCausalLM.from_pretrained(os.path.join(w, "small"), local_files_only=True).eval()
    large = AutoModelForCausalLM.from_pretrained(os.path.join(w, "large"), local_files_only=True).eval()
    return tok, small, large


def n_params(model) -> int:
    """The model's parameter count (tied weights counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------- teacher-forced scoring


def _windows(n: int, ctx: int, stride: int):
    """Yield ``(start, first_target, end)``: the window ``tokens[start:end]`` scores ``first_target .. end-1``.

    Each target is predicted from the tokens before it in the window.
    """
    if not 0 < stride < ctx:
        raise ValueError(f"stride must be in [1, ctx) so that every scored token has context; got {stride=}, {ctx=}")
    if n <= ctx:
        yield 0, 1, n
        return
    done = 1
    start = 0
    while True:
        end = min(start + ctx, n)
        if end == n:
            start = n - ctx
        yield start, done, end
        done = end
        if end == n:
            return
        start += stride


def teacher_forced(model, tokens: np.ndarray, ctx: int = 320, stride: int = 160, batch: int = 8) -> dict:
    """Per-target arrays along ``tokens``: ``logp``, ``entropy``, ``correct`` and ``target``.

    ``logp`` is the true token's log-probability (nats), ``entropy`` the distribution's (nats),
    ``correct`` whether the argmax is the true token, ``target`` the true token id.
    Target ``i`` is ``tokens[i + 1]``.
    """
    import torch

    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    logp = np.zeros(n - 1, dtype=np.float64)
    ent = np.zeros(n - 1, dtype=np.float64)
    corr = np.zeros(n - 1, dtype=bool)
    wins = list(_windows(n, ctx, stride))
    with torch.no_grad():
        for b in range(0, len(wins), batch):
            group = wins[b : b + batch]
            lens = {e - s for s, _, e in group}
            # windows of one length go together (only the last window can be shorter)
            for L in sorted(lens):
                sub = [w for w in group if w[2] - w[0] == L]
                x = torch.from_numpy(np.stack([tokens[s:e] for s, _, e in sub]))
                lp = torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)
                H = -(lp.exp() * lp).sum(-1)
                pred = lp.argmax(-1)
                for r, (s, first, e) in enumerate(sub):
                    j0 = first - 1 - s  # logits at position j predict target s + j + 1
                    j1 = e - 1 - s
                    tgt = x[r, j0 + 1 : j1 + 1]
                    sl = slice(first - 1, e - 1)
                    logp[sl] = lp[r, j0:j1].gather(-1, tgt[:, None])[:, 0].numpy()
                    ent[sl] = H[r, j0:j1].numpy()
                    corr[sl] = (pred[r, j0:j1] == tgt).numpy()
    return {"logp": logp, "entropy": ent, "correct": corr, "target": tokens[1:]}


def _ratio(num: float, den: float):
    """``num / den`` rounded, or ``None`` when the gap ``den`` is zero."""
    return round(float(num) / float(den), 4) if den != 0 else None


def _route_stats(small: dict, large: dict, mask: np.ndarray) -> dict:
    H = small["entropy"][mask]
    cs, cl = small["correct"][mask], large["correct"][mask]
    ls, ll = small["logp"][mask], large["logp"][mask]
    acc_s, acc_l = cs.mean(), cl.mean()
    bpb_s, bpb_l = -ls.mean() / LN2, -ll.mean() / LN2
    order = np.argsort(-H, kind="stable")
    out = {}
    for x in ROUTE_SHARES:
        k = int(round(x * len(H)))
        routed = np.zeros(len(H), dtype=bool)
        routed[order[:k]] = True
        acc = np.where(routed, cl, cs).mean()
        bpb = -np.where(routed, ll, ls).mean() / LN2
        out[f"{int(x * 100)}%"] = {
            "share_routed_to_large": round(float(routed.mean()), 4),
            "entropy_threshold_bits": round(float(H[order[k - 1]] / LN2), 4) if k else None,
            "accuracy": round(float(acc), 4),
            "accuracy_gap_recovered": _ratio(acc - acc_s, acc_l - acc_s),
            "bits_per_byte": round(float(bpb), 4),
            "bits_per_byte_gap_recovered": _ratio(bpb_s - bpb, bpb_s - bpb_l),
        }
    return out


def _model_stats(r: dict, mask: np.ndarray) -> dict:
    return {
        "bits_per_byte": round(float(-r["logp"][mask].mean() / LN2), 4),
        "next_byte_accuracy": round(float(r["correct"][mask].mean()), 4),
        "mean_entropy_bits": round(float(r["entropy"][mask].mean() / LN2), 4),
    }


def _confidence_stats(small: dict, mask: np.ndarray) -> dict:
    """How confident (and how right) the small model is on its easy positions."""
    H = small["entropy"][mask] / LN2
    c = small["correct"][mask]
    order = np.argsort(H, kind="stable")
    out = {}
    for q in (0.5, 0.6):
        k = int(round(q * len(H)))
        out[f"lowest_entropy_{int(q * 100)}%"] = {
            "max_entropy_bits": round(float(H[order[k - 1]]), 4),
            "small_accuracy": round(float(c[order[:k]].mean()), 4),
        }
    for t in (0.25, 0.5):
        sel = H < t
        out[f"entropy_below_{t}_bits"] = {
            "share_of_positions": round(float(sel.mean()), 4),
            "small_accuracy": round(float(c[sel].mean()), 4) if sel.any() else None,
        }
    return out


# ---------------------------------------------------------------- greedy completion


def _line_decoder(models, threshold_nats: float | None):
    """The SDK's decode loop over ``models`` and the routing rule of ``greedy_line``."""
    from ead_sdk.backends.hf import TransformersBackend
    from ead_sdk.policies import FixedPolicy, RollingEntropyPolicy

    backend = TransformersBackend(list(models), device=next(models[0].parameters()).device)
    if len(models) == 1:
        return backend, FixedPolicy(model=0)
    # The large model re-emits exactly the tokens whose small-model entropy exceeds the threshold.
    return backend, RollingEntropyPolicy(window=1, threshold=threshold_nats, unit="nats", escalation="retry_token")


def greedy_line(models, prompt: str, threshold_nats: float | None = None, max_new_tokens: int = 128, decoder=None):
    r"""Greedy completion until ``"\n"``/EOS; returns ``(bytes, n_large_tokens, n_tokens)``.

    With one model: that model only. With ``(small, large)`` and ``threshold_nats``: the large
    model's argmax is emitted wherever the small model's entropy exceeds the threshold. Runs on
    the SDK's own decode loop (``decoder``: a ``(backend, policy)`` pair to reuse).
    """
    from ead_sdk.decode import generate

    backend, policy = decoder or _line_decoder(models, threshold_nats)
    stops = [10, *range(256, backend.vocab_size)]  # a newline ends the line; ids >= 256 are not bytes
    lane = generate(backend, policy, [task.encode(prompt)], max_new_tokens=max_new_tokens, stop=stops).lanes[0]
    emitted = [(t, m) for t, m in zip(lane.tokens, lane.models, strict=True) if t < 256]
    return bytes(t for t, _ in emitted), sum(m > 0 for _, m in emitted), len(emitted)


MAX_NEW_TOKENS = 128


def greedy_scores(models, prompts, threshold_nats: float | None = None):
    """Per-prompt scores (``{metric: array}``) of greedy completions, and the large model's share of their bytes."""
    scores = {m: [] for m in task.METRICS}
    n_large = n_tok = 0
    decoder = _line_decoder(models, threshold_nats)
    for p in prompts:
        text, a, b = greedy_line(models, p.prompt, threshold_nats, MAX_NEW_TOKENS, decoder=decoder)
        for m in task.METRICS:
            scores[m].append(task.score_completion(p, text, m))
        n_large += a
        n_tok += b
    return {m: np.array(v, dtype=np.float64) for m, v in scores.items()}, n_large / max(n_tok, 1)


def _summary(scores: dict) -> dict:
    return {m: round(float(np.mean(v)), 4) for m, v in scores.items()}


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    d = b - a
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {
        "mean_difference": round(float(d.mean()), 4),
        "ci95": [round(float(d.mean() - 1.96 * se), 4), round(float(d.mean() + 1.96 * se), 4)],
        "large_better": int((d > 0).sum()),
        "small_better": int((d < 0).sum()),
        "tied": int((d == 0).sum()),
    }


def evaluate(
    weights=None, n_prompts: int = 200, ctx: int = 320, stride: int = 160, live_routing: bool = True, log=print
) -> dict:
    """Measure the pair (teacher-forced, greedy completion, live routing); the figures of ``results.json``."""
    import torch

    t0 = time.perf_counter()
    tok, small, large = load_pair(weights)
    stream = task.eval_tokens()
    log(f"teacher-forced scoring of {len(stream):,} held-out tokens ...")
    tf_s = teacher_forced(small, stream, ctx, stride)
    tf_l = teacher_forced(large, stream, ctx, stride)
    mask = tf_s["target"] < 256  # score bytes only (not the end-of-file tokens)
    res: dict = {
        "task": "next line of held-out CPython standard-library source (ead_sdk.demo.task)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "held_out_files": list(task.eval_files()),
        "models": {
            "small": {**_describe(small)},
            "large": {**_describe(large)},
        },
        "teacher_forced": {
            "bytes_scored": int(mask.sum()),
            "context_window": ctx,
            "stride": stride,
            "small": _model_stats(tf_s, mask),
            "large": _model_stats(tf_l, mask),
            "small_confidence": _confidence_stats(tf_s, mask),
            "route_top_entropy_to_large": _route_stats(tf_s, tf_l, mask),
        },
    }
    log(json.dumps(res["teacher_forced"], indent=1))

    per: dict = {}
    res["greedy_completion"] = {}
    for cut in task.CUTS:
        prompts = task.load_eval_prompts(n_prompts, cut=cut)
        log(f"greedy completion of {len(prompts)} prompts (cut={cut!r}) ...")
        per[cut] = {"id": [p.id for p in prompts]}
        gen: dict = {"prompts": len(prompts), "max_new_tokens": MAX_NEW_TOKENS}
        for name, models in (("small", [small]), ("large", [large])):
            scores, _ = greedy_scores(models, prompts)
            gen[name] = _summary(scores)
            for m in task.METRICS:
                per[cut][f"{name}_{m}"] = [round(float(x), 4) for x in scores[m]]
            log(f"  {name}-only: {gen[name]}")
        gen["large_minus_small"] = {
            m: _paired(np.array(per[cut][f"small_{m}"]), np.array(per[cut][f"large_{m}"])) for m in task.METRICS
        }
        res["greedy_completion"][cut] = gen

    if live_routing:
        res["live_per_token_routing"] = _live_routing(res, small, large, n_prompts, log)
    res["per_prompt"] = per
    res["evaluation_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _live_routing(res: dict, small, large, n_prompts: int, log) -> dict:
    """Greedy completion routed live at each teacher-forced entropy threshold of ``res``."""
    prompts = task.load_eval_prompts(n_prompts, cut="half")
    base = res["greedy_completion"]["half"]
    live: dict = {
        "cut": "half",
        "note": "greedy; at each position the large model's argmax is emitted when the small "
        "model's entropy there exceeds the threshold (the teacher-forced X% quantile): "
        "rolling_entropy with window 1 and escalation retry_token on the SDK's decode loop",
    }
    for key, r in res["teacher_forced"]["route_top_entropy_to_large"].items():
        thr = r["entropy_threshold_bits"] * LN2
        scores, share = greedy_scores([small, large], prompts, threshold_nats=thr)
        summ = _summary(scores)
        live[key] = {
            "entropy_threshold_bits": r["entropy_threshold_bits"],
            "large_share_of_emitted_bytes": round(share, 4),
            **summ,
            **{
                f"{m}_gap_recovered": _ratio(summ[m] - base["small"][m], base["large"][m] - base["small"][m])
                for m in task.METRICS
            },
        }
        log(f"  live routing at the {key} threshold: {live[key]}")
    return live


def _describe(model) -> dict:
    c = model.config
    return {
        "architecture": type(model).__name__,
        "num_hidden_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "vocab_size": c.vocab_size,
        "parameters": n_params(model),
    }


def main(argv=None) -> int:
    """Command-line entry: evaluate the pair and write ``results.json``."""
    from . import results_path, weights_dir

    ap = argparse.ArgumentParser(prog="python -m ead_sdk.demo.evaluate_pair", description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(weights_dir()))
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--out", default=None, help="results file (default: WEIGHTS/results.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-live-routing", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    res = evaluate(args.weights, args.prompts, live_routing=not args.no_live_routing)
    for name in ("small", "large"):
        meta_path = os.path.join(args.weights, name, "train_meta.json")
        if os.path.exists(meta_path):
            with open(meta_path) as fh:
                meta = json.load(fh)
            res["models"][name]["train_steps"] = meta["recipe"]["steps"]
            res["models"][name]["train_seconds"] = meta["train_seconds"]
    out = args.out or (os.path.join(args.weights, "results.json") if args.weights else str(results_path()))
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
        fh.write("\n")
    summary = {k: v for k, v in res.items() if k != "per_prompt"}
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
