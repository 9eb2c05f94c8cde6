"""The transformers backend through the decode loop, against transformers and a cache-free reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ead_sdk.arrays import as_namespace  # noqa: E402
from ead_sdk.backend import Sampling  # noqa: E402
from ead_sdk.backends.hf import TransformersBackend  # noqa: E402
from ead_sdk.decode import generate, stream  # noqa: E402
from ead_sdk.errors import BackendError, ModelCountError, ReplayOnlyPolicyError  # noqa: E402
from ead_sdk.interface import Policy, Routes, State, Step  # noqa: E402
from ead_sdk.policies.fixed import FixedPolicy  # noqa: E402
from ead_sdk.signals import entropy  # noqa: E402
from ead_sdk.testing.models import tiny_llama  # noqa: E402

VOCAB = 96
torch.set_num_threads(1)


def tiny(layers: int, hidden: int, vocab: int = VOCAB, seed: int = 0) -> Any:
    return tiny_llama(layers, hidden, vocab=vocab, seed=seed, max_positions=256)


def word_tokenizer(size: int = VOCAB, shift: int = 0) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i + shift}": i for i in range(3, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


SMALL, MEDIUM, LARGE = tiny(1, 16, seed=1), tiny(1, 24, seed=2), tiny(2, 32, seed=3)


def pair(**kw: Any) -> TransformersBackend:
    return TransformersBackend([SMALL, LARGE], eos_token_id=kw.pop("eos_token_id", []), **kw)


class TokenMod(Policy):
    """Test policy: the next model is the drawn token modulo ``M`` (switches often, irregularly)."""

    name = "test_token_mod"
    max_models = None

    def __init__(self, models: int = 2, **kw: Any):
        self.m = models
        super().__init__(**kw)

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        xp = as_namespace(xp)
        return {"seen": xp.zeros((n,), dtype=xp.int64, device=device)}

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        routes = (step.token * 7 // 3) % self.m
        routes = routes * step.live + step.model * ~step.live
        return routes, {"seen": state["seen"] + step.live}


def reference(
    models: list[Any], policy: Policy, prompt: list[int], steps: int, vocab: int, eos: Any = ()
) -> tuple[list[int], list[int]]:
    """Greedy decode recomputing the whole sequence from scratch at every step (no caches),
    stopping after an emitted token in ``eos``."""
    state = policy.init_state(1, torch)
    seq, toks, emitted = list(prompt), [], []
    m = policy.initial_model

    def dist(model: int) -> Any:
        with torch.inference_mode():
            return (
                models[model](input_ids=torch.tensor([seq], device=models[model].device)).logits[0, -1, :vocab].float()
            )

    for t in range(steps):
        logits = dist(m)
        tok = int(torch.argmax(logits))
        step = Step(
            entropy=entropy(logits[None]),
            model=torch.tensor([m]),
            index=torch.tensor([t]),
            live=torch.tensor([True]),
            token=torch.tensor([tok]),
            vocab_size=vocab,
        )
        r, state = policy.decide(state, step)
        r = int(r[0])
        emitter = m
        if policy.escalation in ("retry", "retry_token") and r > m:
            tok, emitter = int(torch.argmax(dist(r))), r
        seq.append(tok)
        toks.append(tok)
        emitted.append(emitter)
        if tok in eos:
            break
        m = min(r, m) if policy.escalation == "retry_token" else r
    return toks, emitted


prompts_st = st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=7), min_size=1, max_size=3)


@pytest.mark.parametrize("which", [0, 1])
def test_single_model_matches_transformers_generate(which: int) -> None:
    """Always one model through our loop == that model's own greedy ``generate``, token for token."""
    model = [SMALL, LARGE][which]
    backend = pair()
    for prompt in ([5, 6, 7, 8, 9], [4], [10, 11, 12]):
        out = generate(backend, FixedPolicy(model=which), [prompt], max_new_tokens=12)
        with torch.inference_mode():
            ids = torch.tensor([prompt], device=model.device)  # the backend moved it (CUDA when present)
            ref = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, eos_token_id=None
            )
        assert list(out[0].tokens) == ref[0, len(prompt) :].tolist()
        assert set(out[0].models) == {which}
        assert out[0].report.forwards[which] == 12 and out[0].report.catchup == (0, 0)


def eos_ids(data: st.DataObject, prompts: list[list[int]], steps: int, policy: Policy) -> list[int]:
    """End-of-sequence ids drawn among the tokens a free run emits, so lanes do stop early."""
    free = generate(pair(), policy, prompts, max_new_tokens=steps)
    emitted = sorted({t for lane in free for t in lane.tokens})
    return data.draw(st.lists(st.sampled_from(emitted), max_size=2, unique=True), label="eos")


@settings(max_examples=8)
@given(
    data=st.data(),
    prompts=prompts_st,
    steps=st.integers(1, 10),
    escalation=st.sampled_from(["next", "retry", "retry_token"]),
)
def test_switching_matches_cache_free_reference(data, prompts: list[list[int]], steps: int, escalation: str) -> None:
    """With a policy that switches often and end-of-sequence ids that the lanes emit, every lane's
    tokens and emitting models equal a reference that recomputes each distribution from scratch
    and stops at EOS: the one-pass catch-up is exact, and finished lanes leave the others alone."""
    policy = TokenMod(escalation=escalation)
    eos = eos_ids(data, prompts, steps, policy)
    out = generate(pair(eos_token_id=eos), policy, prompts, max_new_tokens=steps)
    for lane, prompt in zip(out, prompts, strict=True):
        toks, models = reference([SMALL, LARGE], policy, prompt, steps, VOCAB, eos=eos)
        assert list(lane.tokens) == toks
        assert list(lane.models) == models
        assert lane.finish_reason == ("stop" if toks and toks[-1] in eos else "length")


def test_ladder_of_three_matches_reference() -> None:
    """A three-model ladder with catch-ups on every rung equals the cache-free reference."""
    backend = TransformersBackend([SMALL, MEDIUM, LARGE], eos_token_id=[])
    policy = TokenMod(models=3)
    out = generate(backend, policy, [[5, 6, 7], [9]], max_new_tokens=14)
    for lane, prompt in zip(out, [[5, 6, 7], [9]], strict=True):
        assert (list(lane.tokens), list(lane.models)) == reference([SMALL, MEDIUM, LARGE], policy, prompt, 14, VOCAB)
    assert out.report.catchup[2] > 0


@settings(max_examples=8)
@given(data=st.data(), prompts=prompts_st, steps=st.integers(1, 8))
def test_batch_equals_lanes_alone(data, prompts: list[list[int]], steps: int) -> None:
    """A batch of lanes (left padding, per-lane routes, lanes finishing early at EOS) gives each
    lane exactly what it gets alone, and the batch's cost report is the sum of the lanes' reports."""
    backend = pair(eos_token_id=eos_ids(data, prompts, steps, TokenMod()))
    batch = generate(backend, TokenMod(), prompts, max_new_tokens=steps)
    total_forwards = np.zeros(2, int)
    for lane, prompt in zip(batch, prompts, strict=True):
        alone = generate(backend, TokenMod(), [prompt], max_new_tokens=steps)[0]
        assert lane.tokens == alone.tokens and lane.models == alone.models
        assert lane.report.forwards == alone.report.forwards
        assert lane.report.catchup == alone.report.catchup
        total_forwards += lane.report.forwards
    assert tuple(total_forwards) == batch.report.forwards


def test_retry_reemits_from_larger_model() -> None:
    """With escalation "retry", a token whose step escalates is re-drawn by the larger model,
    and the smaller model's forward is counted as wasted (still paid)."""
    policy = TokenMod(escalation="retry")
    prompt = [5, 6, 7, 8]
    out = generate(pair(), policy, [prompt], max_new_tokens=12)[0]
    # Replay the small model's step distributions to find each escalation point.
    seq = list(prompt)
    retried = 0
    m = 0
    for tok, emitter in zip(out.tokens, out.models, strict=True):
        with torch.inference_mode():
            logits_m = [SMALL, LARGE][m](input_ids=torch.tensor([seq], device=LARGE.device)).logits[0, -1]
            logits_l = LARGE(input_ids=torch.tensor([seq], device=LARGE.device)).logits[0, -1]
        drawn = int(torch.argmax(logits_m))
        nxt = int((drawn * 7 // 3) % 2)
        if nxt > m:
            retried += 1
            assert emitter == 1 and tok == int(torch.argmax(logits_l))
        else:
            assert emitter == m and tok == drawn
        seq.append(tok)
        m = nxt
    assert retried > 0
    assert out.report.wasted[0] == retried


def test_padded_vocabularies_are_reconciled() -> None:
    """Models whose output layers are padded to different sizes route over the shared ids only."""
    big = tiny(2, 32, vocab=128, seed=4)
    with torch.no_grad():  # make the padding rows the most likely: they must never be drawn
        big.lm_head.weight[VOCAB:] = 0.0
        big.lm_head.weight[VOCAB:, 0] = 50.0
    backend = TransformersBackend([SMALL, big], tokenizer=word_tokenizer(), eos_token_id=[])
    assert backend.vocab_size == VOCAB
    out = generate(backend, TokenMod(), [[5, 6, 7]], max_new_tokens=10, logprobs="full")
    toks, models = reference([SMALL, big], TokenMod(), [5, 6, 7], 10, VOCAB)
    assert list(out[0].tokens) == toks and list(out[0].models) == models
    assert max(out[0].tokens) < VOCAB
    # Without a tokenizer the shared vocabulary is the smallest output layer, and a warning says so.
    with pytest.warns(UserWarning, match="vocabularies differ"):
        assert TransformersBackend([SMALL, big]).vocab_size == VOCAB


def test_logprobs_for_policies() -> None:
    """Step.logprobs are sorted descending: top-k with ids, or the full row with ids None."""
    seen: dict[str, Any] = {}

    class Spy(FixedPolicy):
        def decide(self, state: State, step: Step) -> tuple[Routes, State]:
            seen.setdefault("steps", []).append(step)
            return super().decide(state, step)

    generate(pair(), Spy(model=0), [[5, 6]], max_new_tokens=3, logprobs=4)
    generate(pair(), Spy(model=0), [[5, 6]], max_new_tokens=3, logprobs="full")
    topk, full = seen["steps"][0], seen["steps"][3]
    assert topk.logprobs.shape == (1, 4) and topk.token_ids.shape == (1, 4)
    assert torch.all(topk.logprobs[:, :-1] >= topk.logprobs[:, 1:])
    assert int(topk.token_ids[0, 0]) == int(topk.token[0])
    assert full.token_ids is None and full.logprobs.shape == (1, VOCAB)
    assert torch.allclose(entropy(full.logprobs), full.entropy, atol=1e-5)


def test_stopping_per_lane() -> None:
    """A lane stops at its EOS, a stop id or a stop string; the others go on to the limit."""
    free = generate(pair(), FixedPolicy(model=1), [[5, 6, 7], [9, 10]], max_new_tokens=8)
    eos = free[0].tokens[2]
    out = generate(pair(eos_token_id=eos), FixedPolicy(model=1), [[5, 6, 7], [9, 10]], max_new_tokens=8)
    assert out[0].tokens == free[0].tokens[:3] and out[0].finish_reason == "stop"
    assert out[1].finish_reason == ("stop" if eos in free[1].tokens else "length")
    by_id = generate(pair(), FixedPolicy(model=1), [[5, 6, 7]], max_new_tokens=8, stop=[eos])
    assert by_id[0].tokens == free[0].tokens[:3]
    backend = TransformersBackend([SMALL, LARGE], tokenizer=word_tokenizer(), eos_token_id=[])
    word = f"w{free[0].tokens[1]}"
    text = generate(backend, FixedPolicy(model=1), ["w5 w6 w7"], max_new_tokens=8, stop=[word])
    assert text[0].tokens == free[0].tokens[:2] and word in text[0].text


def test_sampling_is_seeded_and_uses_warpers() -> None:
    """Same seed, same tokens; a tiny top-p keeps only the argmax, so it equals greedy."""
    backend = pair()
    prompts = [[5, 6], [7]]
    s = Sampling(do_sample=True, temperature=0.7, top_p=0.9, min_p=0.01, top_h=0.5, seed=3)
    a = generate(backend, TokenMod(), prompts, max_new_tokens=8, sampling=s)
    b = generate(backend, TokenMod(), prompts, max_new_tokens=8, sampling=s)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    narrow = generate(
        backend, TokenMod(), prompts, max_new_tokens=8, sampling=Sampling(do_sample=True, top_p=1e-6, seed=1)
    )
    greedy = generate(backend, TokenMod(), prompts, max_new_tokens=8)
    assert [x.tokens for x in narrow] == [x.tokens for x in greedy]
    with pytest.raises(BackendError, match="temperature"):
        Sampling(temperature=0)


def test_stream_yields_what_generate_returns() -> None:
    """The streaming form yields every (lane, token, model) in order, then the result that
    `generate` returns for the same request (tokens, emitters, finish reasons, cost reports)."""
    prompts = [[5, 6], [7, 8, 9]]
    kw = {"max_new_tokens": 5, "sampling": Sampling(do_sample=True, temperature=2.0, seed=5), "stop": [40]}
    s = stream(pair(), TokenMod(), prompts, **kw)
    events = list(s)
    result = s.result()
    direct = generate(pair(), TokenMod(), prompts, **kw)
    assert direct[0].tokens != generate(pair(), TokenMod(), prompts, max_new_tokens=5)[0].tokens  # sampled
    assert [(x.tokens, x.models, x.finish_reason, x.report) for x in result] == [
        (x.tokens, x.models, x.finish_reason, x.report) for x in direct
    ]
    assert result.report == direct.report
    for lane in range(2):
        mine = [e for e in events if e.lane == lane]
        assert [e.token for e in mine] == list(result[lane].tokens)
        assert [e.model for e in mine] == list(result[lane].models)
        assert [e.index for e in mine] == list(range(len(result[lane].tokens)))


def test_bad_input_errors() -> None:
    """Mismatched tokenizers, empty prompts, bad ids, NaN logits and unfit policies are clear errors."""
    with pytest.raises(BackendError, match="tokenizer 1 differs"):
        TransformersBackend([SMALL, LARGE], tokenizer=[word_tokenizer(), word_tokenizer(shift=1)])
    with pytest.raises(BackendError, match="fewer than the tokenizer"):
        TransformersBackend([SMALL, LARGE], tokenizer=word_tokenizer(size=120))
    with pytest.raises(BackendError, match="smallest first"):
        TransformersBackend([LARGE, SMALL])
    with pytest.raises(BackendError, match="prompt 1 is empty"):
        generate(pair(), TokenMod(), [[5], []], max_new_tokens=2)
    with pytest.raises(BackendError, match="prompts must not be empty"):
        generate(pair(), TokenMod(), [], max_new_tokens=2)
    with pytest.raises(BackendError, match="outside the vocabulary"):
        generate(pair(), TokenMod(), [[5, VOCAB]], max_new_tokens=2)
    with pytest.raises(BackendError, match="no tokenizer"):
        generate(pair(), TokenMod(), ["hello"], max_new_tokens=2)
    with pytest.raises(BackendError, match="max_new_tokens"):
        generate(pair(), TokenMod(), [[5]], max_new_tokens=0)
    with pytest.raises(ModelCountError):
        generate(TransformersBackend([SMALL, MEDIUM, LARGE]), FixedPolicy(model=5), [[5]], max_new_tokens=2)

    class Oracle(TokenMod):
        replay_only = True

    with pytest.raises(ReplayOnlyPolicyError, match="replay-only"):
        generate(pair(), Oracle(), [[5]], max_new_tokens=2)

    broken = tiny(2, 32, seed=5)
    with torch.no_grad():
        broken.lm_head.weight[7, 0] = float("nan")
    with pytest.raises(BackendError, match=r"model 1 .* non-finite logits .* lane 0 at generated position 0"):
        generate(TransformersBackend([SMALL, broken]), FixedPolicy(model=1), [[5, 6]], max_new_tokens=3)


@settings(max_examples=40)
@given(
    rows=st.lists(
        st.lists(st.one_of(st.floats(-30, 30), st.just(float("-inf"))), min_size=2, max_size=12).filter(
            lambda r: any(v != float("-inf") for v in r)
        ),
        min_size=1,
        max_size=4,
    ).filter(lambda rows: len({len(r) for r in rows}) == 1)
)
def test_backend_entropy_matches_float64_reference(rows: list[list[float]]) -> None:
    """The backend's entropy of raw logits equals the float64 reference in ead_sdk.signals,
    masked (-inf) tokens included, and NaN logits give NaN (the loop's non-finite check)."""
    from ead_sdk.backends.hf import entropy_of

    x = np.asarray(rows)
    ref = entropy(x.astype(np.float64))
    got = entropy_of(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
    x[0, 0] = np.nan
    assert np.isnan(entropy_of(torch.tensor(x, dtype=torch.float32)).numpy()[0])


def test_a_session_owns_its_batch_and_close_releases_it() -> None:
    from ead_sdk.backend import DecodeRequest

    backend = pair()
    request = DecodeRequest(prompts=((1, 2, 3), (4, 5)), max_new_tokens=3)
    lanes = np.arange(2)
    with backend.start(request) as session:
        draw = session.forward(0, lanes, 0)
        other = backend.start(request)  # a second batch does not disturb the first
        other.forward(1, lanes, 0)
        session.append(0, draw.token, lanes)
        session.forward(0, lanes, 1)
        assert session.caches[0] is not None
    assert session.caches == [None, None]
    with pytest.raises(BackendError, match="closed"):
        session.forward(1, lanes, 1)
    other.close()
