"""Every installed policy decides on torch tensors without a host synchronisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ead_sdk

torch = pytest.importorskip("torch")
from ead_sdk.integrations.host_sync import HostSyncError, forbid_host_sync  # noqa: E402
from ead_sdk.testing.routers import example_spec  # noqa: E402

POLICIES = sorted(ead_sdk.list_policies())


def steps(n: int, vocab: int, count: int, seed: int = 0):
    """Torch steps with full-vocabulary log-probs (for policies that read the distribution)."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.zeros(n, dtype=torch.int64)
    for t in range(count):
        logits = torch.randn(n, vocab, generator=gen) * (0.5 + 3 * (t % 3))
        logprobs = torch.sort(torch.log_softmax(logits, -1), dim=-1, descending=True).values
        yield ead_sdk.Step(
            entropy=ead_sdk.entropy(logits, validate=False),
            model=model,
            index=torch.full((n,), t, dtype=torch.int64),
            live=torch.arange(n) != 1,
            logprobs=logprobs,
            vocab_size=vocab,
            token=torch.zeros(n, dtype=torch.int64),
            future={"disagree": torch.arange(n) % 2 == 0},
        )


@pytest.mark.parametrize("name", POLICIES)
def test_decide_never_syncs_with_the_host(name):
    policy = ead_sdk.load_policy(example_spec(name))
    state = policy.init_state(4, torch)
    routes = torch.full((4,), policy.initial_model, dtype=torch.int64)
    for step in steps(4, 64, 12):
        with forbid_host_sync():  # the lane's model is whatever the policy routed it to
            routes, state = policy.decide(state, dataclasses.replace(step, model=routes))
        assert isinstance(routes, torch.Tensor) and routes.shape == (4,)


def test_the_guard_catches_the_usual_syncs():
    x = torch.ones(3)
    for bad in (
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: x.tolist(),
        lambda: x.numpy(),
        lambda: torch.nonzero(x),
        lambda: int(x[0]),
    ):
        with forbid_host_sync(), pytest.raises(HostSyncError):
            bad()
    with forbid_host_sync():
        torch.where(x > 0, x, -x)  # pure device work passes


def test_numpy_policies_are_untouched_by_the_guard():
    policy = ead_sdk.load_policy("rolling_entropy")
    state = policy.init_state(2, np)
    step = ead_sdk.Step(
        entropy=np.ones(2), model=np.zeros(2, np.int64), index=np.zeros(2, np.int64), live=np.ones(2, bool)
    )
    with forbid_host_sync():
        policy.decide(state, step)
