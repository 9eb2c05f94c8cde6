"""Sampling in the transformers backend: seeded, different from greedy, and drawn from the warped distribution."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scipy import stats  # noqa: E402

from ead_sdk.backend import Sampling  # noqa: E402
from ead_sdk.backends.hf import TransformersBackend  # noqa: E402
from ead_sdk.decode import generate  # noqa: E402
from ead_sdk.policies.fixed import FixedPolicy  # noqa: E402
from ead_sdk.testing.models import tiny_llama  # noqa: E402

VOCAB = 64
torch.set_num_threads(1)
SMALL = tiny_llama(1, 16, vocab=VOCAB, seed=5, initializer_range=1.0)
LARGE = tiny_llama(2, 32, vocab=VOCAB, seed=6, initializer_range=1.0)
PROMPTS = [[5, 6, 7], [9], [30]]


def run(sampling: Sampling | None = None, prompts=PROMPTS, steps: int = 12) -> list[list[int]]:
    backend = TransformersBackend([SMALL, LARGE], eos_token_id=[])
    out = generate(backend, FixedPolicy(model=0), prompts, max_new_tokens=steps, sampling=sampling or Sampling())
    return [list(lane.tokens) for lane in out]


def test_a_hot_temperature_differs_from_greedy_and_seeds_differ():
    """Temperature 5 flattens the distribution: its draws are not the greedy tokens, and two
    seeds draw differently (a backend that ignored `Sampling` would return greedy every time)."""
    greedy = run()
    hot = [run(Sampling(do_sample=True, temperature=5.0, seed=s)) for s in (1, 2)]
    assert hot[0] != greedy and hot[1] != greedy
    assert hot[0] != hot[1]
    assert run(Sampling(do_sample=True, temperature=5.0, seed=1)) == hot[0]


@pytest.mark.parametrize(
    "sampling",
    [Sampling(do_sample=True, temperature=1e-3, seed=4), Sampling(do_sample=True, min_p=0.99, seed=4)],
    ids=["temperature-1e-3", "min_p-0.99"],
)
def test_warpers_that_keep_only_the_top_token_reduce_to_greedy(sampling):
    """A near-zero temperature, or min_p 0.99 (only tokens within 1% of the top one survive),
    leaves the argmax alone: sampling then equals greedy decoding (the prompts are chosen so that
    no runner-up along the greedy path comes within 1% of the top token)."""
    greedy = run()
    for prompt, tokens in zip(PROMPTS, greedy, strict=True):
        with torch.inference_mode():
            logits = SMALL(input_ids=torch.tensor([prompt + tokens], device=SMALL.device)).logits[
                0, len(prompt) - 1 : -1, :VOCAB
            ]
        top2 = torch.topk(torch.softmax(logits, -1), 2, dim=-1).values
        assert float((top2[:, 1] / top2[:, 0]).max()) < 0.97
    assert run(sampling) == greedy


def expected_top_p(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """softmax(logits / T) restricted to the smallest top set holding ``top_p`` of it, renormalised."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)  # the token that crosses top_p stays
    q = np.zeros_like(p)
    q[order[:keep]] = p[order[:keep]]
    return q / q.sum()


def test_first_step_frequencies_match_the_warped_distribution():
    """4000 lanes draw their first token from one prompt: the counts match softmax(logits / T)
    after top-p (chi-square, fixed seed), and no token outside the top-p set is ever drawn."""
    temperature, top_p, lanes = 1.5, 0.8, 4000
    prompt = [5, 6, 7]
    with torch.inference_mode():
        logits = (
            SMALL(input_ids=torch.tensor([prompt], device=SMALL.device)).logits[0, -1, :VOCAB].double().cpu().numpy()
        )
    want = expected_top_p(logits, temperature, top_p)
    kept = want > 0
    assert 3 <= kept.sum() < VOCAB  # top-p cuts the tail but leaves a choice
    drawn = run(Sampling(do_sample=True, temperature=temperature, top_p=top_p, seed=11), [prompt] * lanes, steps=1)
    counts = np.bincount([t[0] for t in drawn], minlength=VOCAB)
    assert counts[~kept].sum() == 0
    expected = want[kept] * lanes
    assert expected.min() >= 5  # every cell large enough for the chi-square approximation
    assert stats.chisquare(counts[kept], expected).pvalue > 1e-3
