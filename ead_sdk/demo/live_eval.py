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

from ead_sdk.cost import CostReport, sum_reports
from ead_sdk.interface import Policy

from . import task

MAX_NEW_TOKENS = 48
# Small batches decode the demo pair fastest (timings: docs/limitations.md): every model's KV
# cache spans the whole batch, and a catch-up pass pads the lanes it does not serve, so routed
# batches grow padded caches.
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

    from . import model_dirs, tokenizer_dir

    hf_logging.disable_progress_bar()  # a bar per checkpoint shard would interleave with ours

    paths = [os.fspath(p) for p in (models or model_dirs())]
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    tokenizer = None
    if {os.path.realpath(p) for p in paths} <= {os.path.realpath(d) for d in model_dirs()}:
        from transformers import AutoTokenizer

        # The demo models share one tokenizer, stored once beside them.
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(), local_files_only=True)
    return TransformersBackend(paths, tokenizer=tokenizer, names=names)


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
        cost_model = res.cost_model
        if progress is not None:
            progress(len(idx))
    per_prompt = {
        m: tuple(task.score_completion(p, t, m) for p, t in zip(prompts, texts, strict=True)) for m in task.METRICS
    }
    quality = {m: float(np.mean(v)) for m, v in per_prompt.items()}
    report = sum_reports(reports, cost_model)
    return LiveScore(quality=quality, report=report, completions=tuple(texts), per_prompt=per_prompt)
