"""OpenAIEngine's client-side CPU time per streamed token, against a bare SSE reader of the same stream.

Both read the same top-20 streams from a fake vLLM-style server (`ead_sdk.testing.fake_openai`, in
a thread of this process): the bare reader (httpx-sse, ``json.loads`` of each event, nothing else)
is the floor any client pays; OpenAIEngine adds reading token ids and the top-k out of each event
and checking them. CPU time is the client thread's own (``time.thread_time``), so the server's
work does not count. Prints the two figures and their ratio.

    python benchmarks/openai_engine.py [--tokens 2000] [--lanes 4] [--k 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
from httpx_sse import aconnect_sse

from ead_sdk.backends.openai_engine import OpenAIEngine
from ead_sdk.serving import EngineRequest
from ead_sdk.testing.fake_openai import FakeOpenAI, ToyLM

VOCAB = 8192  # four-digit ids (SmolLM2 has five): events of about the size a real server sends


async def bare(url: str, model: str, prompts: list[tuple[int, ...]], tokens: int, k: int) -> int:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(prompt):
            body = {"model": model, "prompt": list(prompt), "max_tokens": tokens, "stream": True, "logprobs": k}
            body |= {"return_tokens_as_token_ids": True, "temperature": 0.0}
            n = 0
            async with aconnect_sse(client, "POST", f"{url}/completions", json=body) as source:
                async for event in source.aiter_sse():
                    if event.data != "[DONE]":
                        n += len(json.loads(event.data)["choices"][0]["logprobs"]["tokens"])
            return n

        return sum(await asyncio.gather(*(one(p) for p in prompts)))


async def engine(url: str, model: str, prompts: list[tuple[int, ...]], tokens: int, k: int) -> int:
    eng = OpenAIEngine(url, model, vocab_size=VOCAB, k=k)

    async def one(prompt):
        return sum([1 async for _ in eng.stream(EngineRequest(prompt, tokens, top_k=k))])

    try:
        return sum(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await eng.aclose()


def measure(reader, url: str, model: str, prompts, tokens: int, k: int) -> float:
    """Client-thread CPU seconds per token."""
    start = time.thread_time()
    n = asyncio.run(reader(url, model, prompts, tokens, k))
    return (time.thread_time() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per lane")
    parser.add_argument("--lanes", type=int, default=4, help="concurrent streams")
    parser.add_argument("--k", type=int, default=20, help="top log-probabilities per token")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the best is kept")
    args = parser.parse_args()
    prompts = [(1 + i, 2, 3) for i in range(args.lanes)]
    with FakeOpenAI(ToyLM(VOCAB, seed=0), max_logprobs=args.k) as fake:
        asyncio.run(engine(fake.base_url, fake.model, prompts, 50, args.k))  # warm: the model's cache, imports
        best = {"bare": float("inf"), "engine": float("inf")}
        for _ in range(args.repeats):
            for name, reader in (("bare", bare), ("engine", engine)):
                cost = measure(reader, fake.base_url, fake.model, prompts, args.tokens, args.k)
                best[name] = min(best[name], cost)
    print(f"{args.lanes} lanes x {args.tokens} tokens, top-{args.k}, client CPU per token (best of {args.repeats}):")
    print(f"  bare SSE + json.loads : {best['bare'] * 1e6:8.1f} us")
    print(f"  OpenAIEngine          : {best['engine'] * 1e6:8.1f} us  ({best['engine'] / best['bare']:.2f}x)")


if __name__ == "__main__":
    main()
