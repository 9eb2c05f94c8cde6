"""Live evaluation on the demo task: decode held-out prompts with a policy, score the completions.

The building block of ``ead demo`` and ``ead eval``: greedy decoding with the SDK's own
decoder (`ead_sdk.generate` over `ead_sdk.backends.hf.TransformersBackend`), stopping at the end
of the line, in small batches of prompts of similar length.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.cost import CostReport
from ead_sdk.interface import Policy

from . import task

MAX_NEW_TOKENS = 48
# Measured on the demo pair (2-core CPU, 32 prompts, rolling_entropy with retry): batch 1-2 took
# 2.5 s, 4 took 3.3 s, 16 took 10 s, 32 took 16 s. Every model's KV cache spans the whole batch,
# and a catch-up pass pads the lanes it does not serve, so routed batches grow padded caches.
BATCH = 2
TOP_K = 8


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default 1: the demo models are too small to share a step); return it."""
    import torch

    n = threads or 1
    torch.set_num_threads(n)
    return n


def load_backend(models: Sequence[str | os.PathLike[str]] | None = None) -> Any:
    """A `TransformersBackend` over ``models`` (default: the embedded demo pair), on the CPU unless CUDA is there."""
    from transformers.utils import logging as hf_logging

    from ead_sdk.backends.hf import TransformersBackend

    from . import model_dirs

    hf_logging.disable_progress_bar()  # a bar per checkpoint shard would interleave with ours

    paths = [os.fspath(p) for p in (models or model_dirs())]
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    return TransformersBackend(paths, names=names)


@dataclass(frozen=True)
class LiveScore:
    """One policy's live run on the demo prompts.

    Attributes:
        quality: mean ``exact``, ``soft`` and ``similarity`` over the prompts.
        report: the routing cost of every lane together.
        completions: the generated text of each prompt.
        per_prompt: each metric's per-prompt scores.
    """

    quality: dict[str, float]
    report: CostReport
    completions: tuple[str, ...]
    per_prompt: dict[str, tuple[float, ...]]


def evaluate_live(
    backend: Any,
    policy: Policy,
    prompts: Sequence[task.EvalPrompt],
    *,
    batch: int = BATCH,
    max_new_tokens: int = MAX_NEW_TOKENS,
    logprobs: int | None = TOP_K,
    progress: Callable[[int], None] | None = None,
) -> LiveScore:
    """Greedy-decode every prompt with ``policy`` (stop at newline) and score the completions.

    Prompts are grouped by length (``batch`` per `ead_sdk.generate` call) so little padding is
    computed; results come back in prompt order. ``progress`` is called with the number of
    prompts finished in each batch.
    """
    from ead_sdk.decode import generate

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt))
    texts: list[str] = [""] * len(prompts)
    reports: list[CostReport] = []
    large_cost = 1.0
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        res = generate(
            backend,
            policy,
            [task.encode(prompts[i].prompt) for i in idx],
            max_new_tokens=max_new_tokens,
            stop=["\n"],
            logprobs=logprobs,
        )
        for i, lane in zip(idx, res.lanes, strict=True):
            texts[i] = task.decode(lane.tokens)
        reports.append(res.report)
        large_cost = float(res.cost_model.costs[-1])
        if progress is not None:
            progress(len(idx))
    per_prompt = {
        m: tuple(task.score_completion(p, t, m) for p, t in zip(prompts, texts, strict=True)) for m in task.METRICS
    }
    quality = {m: float(np.mean(v)) for m, v in per_prompt.items()}
    report = sum_reports(reports, large_cost)
    return LiveScore(quality=quality, report=report, completions=tuple(texts), per_prompt=per_prompt)


def sum_reports(reports: Sequence[CostReport], large_cost: float) -> CostReport:
    """The report of several batches' lanes together: counts add, shares and ratios are recomputed.

    ``large_cost`` is the largest model's cost per token (the denominator of ``cost_ratio``).
    """
    first = reports[0]

    def add(name: str) -> tuple[int, ...]:
        return tuple(int(sum(vals)) for vals in zip(*(getattr(r, name) for r in reports), strict=True))

    emitted = add("emitted")
    tokens = sum(r.tokens for r in reports)
    cost = float(sum(r.cost for r in reports))
    return CostReport(
        tokens=tokens,
        emitted=emitted,
        forwards=add("forwards"),
        catchup=add("catchup"),
        wasted=add("wasted"),
        prefill=add("prefill"),
        switches=sum(r.switches for r in reports),
        large_share=emitted[-1] / tokens if tokens else 0.0,
        cost=cost,
        cost_ratio=cost / (large_cost * tokens) if tokens else 0.0,
        unit=first.unit,
        **_batch_sums(reports),
    )


def _batch_sums(reports: Sequence[CostReport]) -> dict[str, Any]:
    """The batches' forward-pass counts added up (what `CostModel.predict_seconds` reads), when every batch has them."""
    if not all(r.passes for r in reports):
        return {}
    add = lambda name: tuple(int(sum(v)) for v in zip(*(getattr(r, name) for r in reports), strict=True))  # noqa: E731
    return {
        "passes": add("passes"),
        "pass_tokens": add("pass_tokens"),
        "catchup_passes": add("catchup_passes"),
        "decode_steps": sum(r.decode_steps for r in reports),
        "large_prefill": sum(r.large_prefill for r in reports),
    }
