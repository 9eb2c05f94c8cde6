"""Every installed policy decides on torch tensors without a host synchronisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ead_sdk

torch = pytest.importorskip("torch")
from ead_sdk.integrations.host_sync import HostSyncError, forbid_host_sync  # noqa: E402
from ead_sdk.testing.routers import example_spec  # noqa: E402

POLICIES = sorted(ead_sdk.installed_policies())


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


def test_a_learned_router_reading_every_feature_never_syncs():
    """Each feature's code path (the route share and token buckets too) stays on the device."""
    from ead_sdk.router.features import FEATURES
    from ead_sdk.testing.routers import example_router

    policy = ead_sdk.load_policy({"policy": "learned", "params": {"router": example_router(features=FEATURES)}})
    state = policy.init_state(4, torch)
    routes = torch.zeros(4, dtype=torch.int64)
    for step in steps(4, 64, 12):
        with forbid_host_sync():
            routes, state = policy.decide(state, dataclasses.replace(step, model=routes))
    assert routes.shape == (4,)


def _setitem(x, index, value):
    x[index] = value


@pytest.mark.parametrize(
    "bad",
    [
        lambda x: x.sum().item(),
        lambda x: bool(x.sum() > 0),
        lambda x: x.tolist(),
        lambda x: x.numpy(),
        lambda x: torch.nonzero(x),
        lambda x: int(x[0]),
        lambda x: x[x > 0],  # boolean-mask read: the output's length depends on the values
        lambda x: x[(x > 0, slice(None))[:1]],
        lambda x: x[np.array([True, False, True])],
        lambda x: _setitem(x, x > 0, 2.0),  # boolean-mask write
        lambda x: x.index_put_((x > 0,), torch.tensor(1.0)),
        lambda x: torch.where(x > 0),  # one argument: nonzero
        lambda x: np.asarray(x),
        lambda x: 1.0 in x,
        lambda x: torch.equal(x, x),
        lambda x: torch.allclose(x, x),
    ],
)
def test_the_guard_catches_each_sync(bad):
    x = torch.ones(3)
    with forbid_host_sync(), pytest.raises(HostSyncError, match="host synchronisation"):
        bad(x)


def test_the_guard_lets_device_work_through():
    """Fixed-shape work passes: three-argument where, integer (gather) indexing, masked_fill."""
    x, idx = torch.arange(3.0), torch.tensor([2, 0])
    with forbid_host_sync():
        y = torch.where(x > 0, x, -x)
        z = x[idx]
        x[idx] = 5.0
        w = x.masked_fill(x > 4, 0.0)
        v = x[None, 1:]
    assert y.tolist() == [0.0, 1.0, 2.0] and z.tolist() == [2.0, 0.0]
    assert x.tolist() == [5.0, 1.0, 5.0] and w.tolist() == [0.0, 1.0, 0.0] and v.shape == (1, 2)


def test_numpy_policies_are_untouched_by_the_guard():
    policy = ead_sdk.load_policy("rolling_entropy")
    state = policy.init_state(2, np)
    step = ead_sdk.Step(
        entropy=np.ones(2), model=np.zeros(2, np.int64), index=np.zeros(2, np.int64), live=np.ones(2, bool)
    )
    with forbid_host_sync():
        policy.decide(state, step)


def _to_device(step: ead_sdk.Step, device: str) -> ead_sdk.Step:
    moved = {f.name: getattr(step, f.name) for f in dataclasses.fields(step)}
    for key, value in moved.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device)
        elif isinstance(value, dict):
            moved[key] = {k: v.to(device) for k, v in value.items()}
    return ead_sdk.Step(**moved)


@pytest.mark.needs_hardware
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", POLICIES)
def test_decide_never_syncs_on_a_gpu(name):
    """On a GPU the runtime itself raises on a synchronising call inside each per-step decide."""
    policy = ead_sdk.load_policy(example_spec(name))
    state = policy.init_state(4, torch, device="cuda")
    routes = torch.full((4,), policy.initial_model, dtype=torch.int64, device="cuda")
    cuda_steps = [_to_device(step, "cuda") for step in steps(4, 64, 12)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in cuda_steps:
            routes, state = policy.decide(state, dataclasses.replace(step, model=routes))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert routes.device.type == "cuda" and routes.shape == (4,)
