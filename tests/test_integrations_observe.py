"""PolicyObserver: an observe-only logits processor inside transformers' own generate."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import LogitsProcessorList  # noqa: E402

import ead_sdk  # noqa: E402
from ead_sdk.errors import EadError  # noqa: E402
from ead_sdk.integrations import PolicyObserver  # noqa: E402
from ead_sdk.integrations.host_sync import forbid_host_sync  # noqa: E402
from ead_sdk.testing.models import tiny_llama  # noqa: E402
from ead_sdk.testing.routers import example_spec  # noqa: E402
from ead_sdk.traces import TraceMeta, TraceWriter, read_traces  # noqa: E402

VOCAB = 64
torch.set_num_threads(1)


def tiny(layers: int, hidden: int, seed: int) -> Any:
    """A random Llama whose next-token entropies spread over (0, 2.5) nats (initializer_range=1)."""
    return tiny_llama(layers, hidden, vocab=VOCAB, seed=seed, initializer_range=1.0)


MODEL = tiny(2, 32, seed=3)
POLICY = ead_sdk.load_policy({"policy": "rolling_entropy", "params": {"window": 2, "threshold": 1.0, "unit": "nats"}})


def batch(prompts: list[list[int]]) -> tuple[Any, Any]:
    """Left-padded ids and attention mask, as a tokenizer with padding_side='left' gives them."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def run(ids: Any, mask: Any, observer: PolicyObserver | None, seed: int, **kw: Any) -> Any:
    torch.manual_seed(seed)
    procs = LogitsProcessorList([observer]) if observer is not None else None
    return MODEL.generate(ids, attention_mask=mask, logits_processor=procs, pad_token_id=0, **kw)


prompt_lists = st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=6), min_size=1, max_size=3)


@settings(max_examples=15)
@given(prompts=prompt_lists, sample=st.booleans(), seed=st.integers(0, 2**16), new=st.integers(1, 8))
def test_generate_output_is_unchanged(prompts, sample, seed, new):
    """For any left-padded batch, greedy or seeded sampling, generate with the observer returns
    exactly the ids it returns without it, and the observation covers every generated token."""
    ids, mask = batch(prompts)
    kw = dict(max_new_tokens=new, do_sample=sample, eos_token_id=[])
    if sample:
        kw.update(temperature=0.8, top_p=0.9)
    plain = run(ids, mask, None, seed, **kw)
    observer = PolicyObserver(POLICY, model=MODEL)
    watched = run(ids, mask, observer, seed, **kw)
    assert torch.equal(plain, watched)
    seen = observer.finish(watched, attention_mask=mask)
    for lane, prompt, row in zip(seen.lanes, prompts, watched, strict=True):
        assert lane.prompt.tolist() == prompt
        assert lane.tokens.tolist() == row[ids.shape[1] :].tolist()
        assert lane.entropy.shape == lane.routes.shape == lane.token_logprob.shape == (new,)


def reference(ids: Any, mask: Any, out: Any) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced float64 entropy and token log-probs of every generated position, no cache."""
    full_mask = torch.cat([mask, torch.ones_like(out[:, ids.shape[1] :])], 1)
    pos = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = MODEL(out, attention_mask=full_mask, position_ids=pos).logits.double()
    logits = logits[:, ids.shape[1] - 1 : -1]
    h = ead_sdk.entropy(logits.numpy(), validate=False)
    lp = torch.log_softmax(logits, -1).gather(2, out[:, ids.shape[1] :, None])[..., 0]
    return h, lp.numpy()


def reference_topk(ids: Any, mask: Any, out: Any, k: int) -> Any:
    """Teacher-forced float64 top-k log-probs (values and ids) of every generated position."""
    full_mask = torch.cat([mask, torch.ones_like(out[:, ids.shape[1] :])], 1)
    pos = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = MODEL(out, attention_mask=full_mask, position_ids=pos).logits.double()
    return torch.topk(torch.log_softmax(logits[:, ids.shape[1] - 1 : -1], -1), k, dim=-1)


def numpy_routes(entropy: np.ndarray, live: np.ndarray, model_index: int) -> np.ndarray:
    """The policy decided step by step on numpy: the slow reference for the torch path."""
    n, steps = entropy.shape
    state = POLICY.init_state(n, np)
    out = np.zeros((n, steps), np.int64)
    for t in range(steps):
        step = ead_sdk.Step(
            entropy=entropy[:, t].astype(np.float64),
            model=np.full(n, model_index),
            index=np.full(n, t),
            live=live[:, t],
        )
        routes, state = POLICY.decide(state, step)
        out[:, t] = routes
    return out


def test_values_match_a_teacher_forced_reference_and_numpy_decisions():
    ids, mask = batch([[5, 9, 11, 3], [7, 8]])
    probe = run(ids, mask, None, 0, max_new_tokens=10, eos_token_id=[])
    eos = int(probe[1, ids.shape[1] + 3])  # lane 1 ends at its 4th token (lane 0 maybe too)
    observer = PolicyObserver(POLICY, model=MODEL, model_index=1, eos_token_id=eos)
    out = run(ids, mask, observer, 0, max_new_tokens=10, eos_token_id=eos)
    seen = observer.finish(out, attention_mask=mask)
    assert seen[1].finished and seen[1].tokens[-1] == eos and seen[1].tokens.size <= 4
    h_ref, lp_ref = reference(ids, mask, out)
    steps = out.shape[1] - ids.shape[1]
    entropy = np.zeros((2, steps))
    live = np.ones((2, steps), bool)
    for i, lane in enumerate(seen):
        t = lane.tokens.size
        np.testing.assert_allclose(lane.entropy, h_ref[i, :t], atol=2e-4)
        np.testing.assert_allclose(lane.token_logprob, lp_ref[i, :t], atol=2e-4)
        entropy[i, :t] = lane.entropy
        live[i, t:] = False
    expected = numpy_routes(entropy, live, model_index=1)
    for i, lane in enumerate(seen):
        assert lane.routes.tolist() == expected[i, : lane.tokens.size].tolist()
    assert {0, 1} <= set(np.concatenate([lane.routes for lane in seen]).tolist())  # the policy did switch


def test_records_a_single_model_trace_with_the_would_be_routes(tmp_path):
    ids, mask = batch([[5, 9, 11], [7, 8, 4, 4]])
    path = tmp_path / "observed.arrows"
    with PolicyObserver(POLICY, model=MODEL, model_index=1, record=path, record_k=3) as observer:
        for seed in (0, 1):
            out = run(ids, mask, observer, seed, max_new_tokens=6, do_sample=True, eos_token_id=[])
            seen = observer.finish(out, attention_mask=mask)
    traces = read_traces(path)
    assert traces.meta.num_models == 1 and traces.meta.k == 3 and traces.meta.vocab_size == VOCAB
    assert traces.meta.generation["policy"] == POLICY.spec()
    assert traces.meta.generation["model_index"] == 1
    rows = traces.sequences()
    assert [r.fields["sequence_id"] for r in rows] == [0, 1, 2, 3]
    for row, lane in zip(rows[2:], seen.lanes, strict=True):  # the second call's lanes
        assert row.prompt_ids.tolist() == lane.prompt.tolist()
        assert row.token_ids.tolist() == lane.tokens.tolist()
        assert row.emitted_by.tolist() == [0] * lane.tokens.size
        np.testing.assert_allclose(row.entropy[:, 0], lane.entropy)
        assert row.fields["policy_routes"] == lane.routes.tolist()
        assert row.top_logprobs.shape == (lane.tokens.size, 1, 3)
    # The recorded values are those of a teacher-forced float64 pass over the second call's output.
    h_ref, lp_ref = reference(ids, mask, out)
    top_ref = reference_topk(ids, mask, out, 3)
    for i, row in enumerate(rows[2:]):
        t = row.token_ids.size
        np.testing.assert_allclose(row.entropy[:, 0], h_ref[i, :t], atol=2e-4)
        np.testing.assert_allclose(row.token_logprob[:, 0], lp_ref[i, :t], atol=2e-4)
        np.testing.assert_allclose(row.top_logprobs[:, 0], top_ref.values[i, :t].numpy(), atol=2e-4)
        assert row.top_ids[:, 0].tolist() == top_ref.indices[i, :t].tolist()


def test_a_given_trace_writer_receives_the_rows(tmp_path):
    meta = TraceMeta(1, ("observed",), (1000,), VOCAB, "", 0)
    ids, mask = batch([[5, 9, 11]])
    with TraceWriter(tmp_path / "t.arrows", meta) as writer:
        observer = PolicyObserver(POLICY, model=MODEL, record=writer)
        observer.finish(run(ids, mask, observer, 0, max_new_tokens=4, eos_token_id=[]))
        observer.close()  # leaves a writer it was given open
        assert not writer.closed
    assert len(read_traces(tmp_path / "t.arrows")) == 1


def test_logprob_policies_see_the_distribution():
    policy = ead_sdk.load_policy({"policy": "confidence", "params": {"threshold": 0.5}})
    ids, mask = batch([[5, 9, 11], [7]])
    observer = PolicyObserver(policy, model=MODEL, logprobs="full")
    out = run(ids, mask, observer, 0, max_new_tokens=8, eos_token_id=[])
    seen = observer.finish(out, attention_mask=mask)
    for lane in seen:  # confidence: the large model when the top token is less likely than 0.5
        top = np.exp(np.max(reference_logprobs(out, mask, ids.shape[1], lane is seen[1]), -1))
        assert lane.routes.tolist() == (top < 0.5).astype(int).tolist()


def reference_logprobs(out: Any, mask: Any, plen: int, second: bool) -> np.ndarray:
    i = 1 if second else 0
    full_mask = torch.cat([mask, torch.ones_like(out[:, plen:])], 1)
    pos = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = MODEL(out, attention_mask=full_mask, position_ids=pos).logits.double()
    return torch.log_softmax(logits[i, plen - 1 : -1], -1).numpy()


@pytest.mark.parametrize("name", sorted(n for n in ead_sdk.installed_policies() if n != "oracle"))
def test_the_observer_step_never_syncs_with_the_host(name):
    """Per step, the observer and the policy stay on the device (finish is the one sync).

    The first call of a generate builds the policy's state, copying its parameters to the
    device once; every later step must not touch the host."""
    observer = PolicyObserver(example_spec(name), logprobs="full", param_count=1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (3, 4), generator=gen)
    for t in range(5):
        scores = torch.randn(3, VOCAB, generator=gen) * 3
        with forbid_host_sync() if t > 0 else contextlib.nullcontext():
            assert observer(ids, scores) is scores
        ids = torch.cat([ids, torch.randint(3, VOCAB, (3, 1), generator=gen)], 1)


def test_per_lane_parameters_reach_the_policy():
    policy = ead_sdk.load_policy(
        {"policy": "rolling_entropy", "params": {"window": 1, "threshold": {"per_lane": [0.0, 100.0]}, "unit": "nats"}}
    )
    observer = PolicyObserver(policy, model=MODEL)
    ids, mask = batch([[5, 9], [5, 9]])
    seen = observer.finish(run(ids, mask, observer, 0, max_new_tokens=5, eos_token_id=[]), attention_mask=mask)
    assert seen[0].routes.tolist() == [1] * 5 and seen[1].routes.tolist() == [0] * 5


def test_prompt_padding_is_stripped_without_a_mask():
    ids, mask = batch([[5, 9, 11], [7]])
    observer = PolicyObserver(POLICY, model=MODEL)
    seen = observer.finish(run(ids, mask, observer, 0, max_new_tokens=2, eos_token_id=[]))
    assert seen[1].prompt.tolist() == [7]


def test_misuse_is_refused_clearly():
    with pytest.raises(EadError, match="model_index"):
        PolicyObserver(POLICY, model_index=2)
    with pytest.raises(ead_sdk.ReplayOnlyPolicyError, match="replay-only"):
        PolicyObserver("oracle")
    with pytest.raises(EadError, match="parameter count"):
        PolicyObserver(POLICY, record="x.arrows")
    with pytest.raises(ead_sdk.ModelCountError):
        PolicyObserver("hysteresis", num_models=3)
    observer = PolicyObserver(POLICY, model=MODEL)
    with pytest.raises(EadError, match="no generate call"):
        observer.finish(torch.zeros((1, 3), dtype=torch.long))
    ids, mask = batch([[5, 9, 11]])
    run(ids, mask, observer, 0, max_new_tokens=3, eos_token_id=[])
    with pytest.raises(EadError, match="not the observed call"):
        observer.finish(torch.zeros((1, 6), dtype=torch.long))
    with pytest.warns(UserWarning, match="before finish"):
        run(ids, mask, observer, 0, max_new_tokens=3, eos_token_id=[])


def test_finish_honours_the_end_ids_generate_used_not_the_model_config():
    """generate(eos_token_id=[]) ends no lane, even one that draws the config's end id (1)."""
    ids, mask = batch([[50, 7]])
    observer = PolicyObserver(POLICY, model=MODEL)  # the model config says eos 1
    out = run(ids, mask, observer, 0, max_new_tokens=2, eos_token_id=[])
    assert out[0, 2:].tolist()[0] == 1  # the model draws the config's end id first...
    seen = observer.finish(out, attention_mask=mask)
    assert seen[0].tokens.tolist() == out[0, 2:].tolist() and not seen[0].finished  # ...and goes on
    # Ended by generate (its own eos 1, padding 0 after it): the lane stops there.
    observer = PolicyObserver(POLICY, model=MODEL)
    out = run(ids, mask, observer, 0, max_new_tokens=4, eos_token_id=1)
    seen = observer.finish(out, attention_mask=mask)
    assert seen[0].tokens.tolist() == [1] and seen[0].finished and out[0, 3:].tolist() == [0] * (out.shape[1] - 3)


def test_a_broken_policy_is_named_in_the_observer_too():
    """The observer calls decide through the same contract check as generate and replay."""
    from ead_sdk import PolicyError
    from tests.test_decode_checks import Bad

    ids, mask = batch([[5, 6], [7]])
    observer = PolicyObserver(Bad("float"), model=MODEL)
    with pytest.raises(PolicyError, match="policy 'bad' at step 1: routes must be model indices of an integer dtype"):
        run(ids, mask, observer, 0, max_new_tokens=4, do_sample=False, eos_token_id=[])
