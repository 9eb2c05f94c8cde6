"""The testing kit: check_policy catches broken policies; strategies and fixtures are sound."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given

from ead_sdk.arrays import as_namespace, namespace
from ead_sdk.interface import Policy
from ead_sdk.params import Param
from ead_sdk.signals import entropy
from ead_sdk.state import mask_state
from ead_sdk.testing import ConformanceError, check_policy, make_episode, parametrize_with_checks, run_episode
from ead_sdk.testing.conformance import CHECKS, TORCH_CHECKS
from ead_sdk.testing.strategies import entropy_streams, episodes, logits_rows, step_batches


class Threshold(Policy):
    """A correct little policy: large model above a threshold; counts its tokens."""

    name = "kit_threshold"
    parameters = (Param("threshold", "float", default=1.0, low=0.0),)

    def init_state(self, n: int, xp: Any, device: Any = None) -> dict:
        xp = as_namespace(xp)
        state = self.lane_params(n, xp, device)
        state["seen"] = xp.zeros((n,), dtype=xp.int64)
        return state

    def routes(self, state, step, xp):
        return xp.astype(xp.astype(step.entropy, state["threshold"].dtype) > state["threshold"], xp.int64)

    def decide(self, state, step):
        xp = namespace(state["threshold"])
        new = dict(state, seen=state["seen"] + 1)
        return xp.where(step.live, self.routes(state, step, xp), step.model), mask_state(step.live, new, state)


class Mutates(Threshold):
    name = "kit_mutates"

    def decide(self, state, step):
        state["seen"] += 1
        return super().decide(dict(state), step)


class LooksAcrossLanes(Threshold):
    name = "kit_across"

    def routes(self, state, step, xp):
        return xp.astype(step.entropy > xp.mean(step.entropy), xp.int64)


class ForgetsDeadLanes(Threshold):
    name = "kit_dead"

    def decide(self, state, step):
        xp = namespace(state["threshold"])
        return xp.where(step.live, self.routes(state, step, xp), step.model), dict(state, seen=state["seen"] + 1)


class RoutesDeadLanes(Threshold):
    name = "kit_dead_routes"

    def decide(self, state, step):
        routes, new = super().decide(state, step)
        xp = namespace(routes)
        return xp.where(step.live, routes, xp.zeros_like(routes) + 1), new


class OutOfRange(Threshold):
    name = "kit_range"

    def routes(self, state, step, xp):
        return super().routes(state, step, xp) * 2


class GlobalRandom(Threshold):
    name = "kit_random"

    def routes(self, state, step, xp):
        return xp.asarray((np.random.random(step.n) < 0.5).astype(np.int64))


class IgnoresLaneParams(Threshold):
    name = "kit_lane_params"
    parameters = (Param("threshold", "float", default=1.0, low=0.0),)

    def init_state(self, n, xp, device=None):
        state = super().init_state(n, xp, device)
        state["threshold"] = state["threshold"][:1] * as_namespace(xp).ones((n,), dtype=state["threshold"].dtype)
        return state


def test_a_correct_policy_passes_every_check():
    report = check_policy(Threshold, params={"threshold": 0.8}, lane_variants=[{"threshold": 0.1}, {"threshold": 3.0}])
    assert report.policy == "kit_threshold" and report.decisions > 0
    assert {"purity", "dead_lanes", "batched_vs_lanes", "spec_roundtrip", "lane_variants"} <= set(report.checks)


@pytest.mark.parametrize(
    "cls, check",
    [
        (Mutates, "purity"),
        (LooksAcrossLanes, "batched_vs_lanes"),
        (ForgetsDeadLanes, "dead_lanes"),
        (RoutesDeadLanes, "dead_lanes"),
        (OutOfRange, "routes"),
        (GlobalRandom, "determinism"),
        (IgnoresLaneParams, "lane_variants"),
    ],
)
def test_broken_policies_are_caught_by_name(cls, check):
    with pytest.raises(ConformanceError, match=repr(check)):
        check_policy(cls, lane_variants=[{"threshold": 0.1}, {"threshold": 3.0}], torch=False)


def test_importing_the_kit_loads_neither_torch_nor_hypothesis():
    code = "import sys, ead_sdk.testing; print('torch' in sys.modules, 'hypothesis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_pytest_plugin_import_is_cheap():
    code = "import sys, ead_sdk.testing.pytest_plugin; print('hypothesis' in sys.modules, 'ead_sdk.testing.conformance' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_fixtures(policy_checker, episode_factory, run_policy, step_batches):
    assert policy_checker is check_policy
    run = run_policy(Threshold(), episode_factory(3, lanes=2, steps=5))
    assert run.routes.shape == (5, 2)
    from hypothesis.strategies import SearchStrategy

    assert isinstance(step_batches(logprobs="topk"), SearchStrategy)


@given(step=step_batches(logprobs="topk"))
def test_step_batches_are_consistent(step):
    """Fields agree in shape, log-probs are sorted, and the entropy is at least the top-k's part of it."""
    n = step.n
    assert step.logprobs.shape[0] == step.token_ids.shape[0] == step.model.shape[0] == step.live.shape[0] == n
    assert np.all(step.logprobs[:, :-1] >= step.logprobs[:, 1:])
    assert np.all(
        step.entropy
        >= -np.sum(np.exp(step.logprobs) * np.where(np.isfinite(step.logprobs), step.logprobs, 0), axis=1) - 1e-9
    )


@given(row=logits_rows())
def test_logits_rows_are_valid_distributions(row):
    """Every drawn row has a finite maximum and no NaN or +inf, so its entropy is defined."""
    assert np.isfinite(row.max()) and not np.any(np.isnan(row)) and not np.any(row == np.inf)
    assert 0.0 <= float(entropy(row[None])[0]) <= np.log(row.size) + 1e-9


@given(stream=entropy_streams())
def test_entropy_streams_are_non_negative(stream):
    """Entropy streams are finite, non-negative nats."""
    assert np.all(np.isfinite(stream)) and np.all(stream >= 0)


@given(episode=episodes())
def test_episodes_are_consistent(episode):
    """An episode's entropies are those of its log-probs (exactly for the full vocabulary; at
    least the top-k part otherwise), and the lengths are within the steps."""
    lp = episode.logprobs
    p = np.exp(lp)
    partial = -np.sum(p * np.where(p > 0, lp, 0), axis=-1)
    if episode.token_ids is None:
        np.testing.assert_allclose(partial, episode.entropy, atol=1e-9)
    else:
        assert np.all(partial <= episode.entropy + 1e-9)
    assert np.all((episode.lengths >= 0) & (episode.lengths <= episode.steps))


def test_run_episode_records_retry_emissions():
    episode = make_episode(0, lanes=3, steps=12)

    class Always(Threshold):
        name = "kit_always"

        def routes(self, state, step, xp):
            return xp.ones_like(xp.astype(step.model, xp.int64))

    run = run_episode(Always(escalation="retry"), episode)
    assert np.all(run.emitted[run.live] == 1)
    run = run_episode(Always(), episode)
    assert np.all(run.emitted[0] == 0) and np.all(run.emitted[1:][run.live[1:]] == 1)


class NumpyInside(Threshold):
    """Converts its inputs to numpy: right on numpy, but it would leave the GPU every step."""

    name = "kit_numpy_inside"

    def decide(self, state, step):
        host = {k: np.asarray(v) for k, v in state.items()}
        return super().decide(
            host,
            replace(step, entropy=np.asarray(step.entropy), live=np.asarray(step.live), model=np.asarray(step.model)),
        )


class SyncsOnHost(Threshold):
    """Branches in Python on a tensor value: a host sync per step on a GPU."""

    name = "kit_syncs"

    def decide(self, state, step):
        if bool((step.entropy > 100.0).any()):  # never true, but asking is a sync
            raise AssertionError("unreachable")
        return super().decide(state, step)


@pytest.mark.parametrize("cls, check", [(NumpyInside, "torch_namespace"), (SyncsOnHost, "host_sync")])
def test_torch_checks_catch_policies_that_leave_the_device(cls, check):
    pytest.importorskip("torch")
    with pytest.raises(ConformanceError, match=repr(check)):
        check_policy(cls, escalations=("next",))


def test_check_policy_reports_every_failing_check_not_just_the_first():
    class TwoFaults(Mutates):
        name = "kit_two_faults"

        def routes(self, state, step, xp):
            return LooksAcrossLanes.routes(self, state, step, xp)

    with pytest.raises(ConformanceError) as info:
        check_policy(TwoFaults, torch=False)
    failed = {f.args[0].split(" fails ")[1].split(":")[0] for f in info.value.failures}
    assert {"'purity'", "'batched_vs_lanes'"} <= failed


@parametrize_with_checks([Threshold(threshold=0.8)], lane_variants=[{"threshold": 0.1}, {"threshold": 3.0}])
def test_each_check_is_its_own_test(policy, check):
    check(policy)


def test_parametrize_with_checks_gives_one_id_per_check():
    mark = parametrize_with_checks([Threshold(threshold=0.8), (Threshold, {"threshold": 2.0})], torch=False)
    ids = mark.kwargs["ids"]
    assert ids[: len(CHECKS) - 4] == [
        f"kit_threshold-{c}" for c in CHECKS if c not in TORCH_CHECKS + ("lane_variants",)
    ]
    assert len(ids) == 2 * (len(CHECKS) - 4) and len(set(ids)) == len(ids) // 2
