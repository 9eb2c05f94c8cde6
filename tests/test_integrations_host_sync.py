"""Gaps left by test_host_sync: per-lane parameters, top-k steps and retry, for every policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ead_sdk
from ead_sdk.interface import ESCALATIONS

torch = pytest.importorskip("torch")
from ead_sdk.integrations.host_sync import forbid_host_sync  # noqa: E402
from ead_sdk.testing.routers import example_spec  # noqa: E402

LIVE = sorted(
    name for name, info in ead_sdk.installed_policies().items() if not getattr(info.cls, "replay_only", False)
)
N, VOCAB, K = 4, 48, 6


def per_lane(name: str, escalation: str) -> ead_sdk.Policy:
    """The policy with every per-lane numeric parameter given as a per-lane array of its default."""
    cls = ead_sdk.installed_policies()[name].cls
    params = {
        p.name: {"per_lane": np.full(N, p.default).tolist()}
        for p in cls.parameters
        if p.lane
        and p.kind in ("float", "int")
        and not p.required
        and isinstance(p.default, (int, float))
        and not isinstance(p.default, bool)
    }
    return ead_sdk.load_policy(example_spec(name, params=params, escalation=escalation))


def topk_steps(count: int, seed: int = 0):
    """Torch steps carrying top-k log-probs and their ids (a top-k live request)."""
    gen = torch.Generator().manual_seed(seed)
    for t in range(count):
        logits = torch.randn(N, VOCAB, generator=gen) * (0.5 + 2 * (t % 3))
        top = torch.topk(torch.log_softmax(logits, -1), K, dim=-1)
        yield ead_sdk.Step(
            entropy=ead_sdk.entropy(logits, validate=False),
            model=torch.zeros(N, dtype=torch.int64),
            index=torch.full((N,), t, dtype=torch.int64),
            live=torch.arange(N) != 2,
            logprobs=top.values,
            token_ids=top.indices,
            token=top.indices[:, 0],
            vocab_size=VOCAB,
        )


@pytest.mark.parametrize("escalation", ESCALATIONS)
@pytest.mark.parametrize("name", LIVE)
def test_per_lane_parameters_and_topk_steps_decide_on_the_device(name, escalation):
    """With per-lane parameters in the state and top-k steps, decide makes no host sync and
    routes every lane to a model of the ladder, leaving the finished lane's state untouched."""
    policy = per_lane(name, escalation)
    state = policy.init_state(N, torch)
    routes = torch.full((N,), policy.initial_model, dtype=torch.int64)
    for step in topk_steps(10):
        before = {k: v.clone() for k, v in state.items()}
        with forbid_host_sync():
            routes, state = policy.decide(state, dataclasses.replace(step, model=routes))
        assert routes.shape == (N,) and bool(((routes >= 0) & (routes < 2)).all())
        for key, value in state.items():
            assert torch.equal(value[2], before[key][2]), f"{name}: finished lane's {key!r} changed"


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_cost_budget_with_per_lane_costs_decides_on_the_device(mode):
    """cost_budget measuring cost with a (lanes, 2) cost array: no host sync either."""
    costs = np.array([[1.0, 8.0], [1.0, 4.0], [2.0, 3.0], [1.0, 70.0]])
    policy = ead_sdk.load_policy(
        {
            "policy": "cost_budget",
            "params": {
                "measure": "cost",
                "costs": {"per_lane": costs.tolist()},
                "budget": {"per_lane": [0.1, 0.2, 0.3, 0.5]},
                "mode": mode,
            },
        }
    )
    state = policy.init_state(N, torch)
    routes = torch.zeros(N, dtype=torch.int64)
    for step in topk_steps(12, seed=1):
        with forbid_host_sync():
            routes, state = policy.decide(state, dataclasses.replace(step, model=routes))
    assert routes.dtype == torch.int64 and routes.shape == (N,)
