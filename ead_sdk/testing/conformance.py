"""`check_policy`: the conformance check every policy author runs in their own tests.

It drives the policy through synthetic episodes (full-vocabulary and top-k log-probs, lanes
that finish early, every escalation mode) and checks the contract the SDK relies on.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from ead_sdk.arrays import to_numpy
from ead_sdk.errors import ConformanceError
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import ESCALATIONS, Policy, State, Step
from ead_sdk.params import is_lane_array
from ead_sdk.state import concat_states, select_lanes
from ead_sdk.testing.episodes import Episode, EpisodeRun, make_episode, run_episode

CHECKS = (
    "routes",
    "dead_lanes",
    "purity",
    "state_shape",
    "determinism",
    "batched_vs_lanes",
    "select_concat",
    "lane_params",
    "lane_variants",
    "spec_roundtrip",
    "numpy_vs_torch",
)


@dataclass(frozen=True)
class ConformanceReport:
    """Which checks passed for which policy, over how many decisions."""

    policy: str
    checks: tuple[str, ...]
    decisions: int
    skipped: tuple[str, ...] = field(default=())


def _fail(check: str, policy: Policy, msg: str) -> ConformanceError:
    return ConformanceError(f"policy {policy.name!r} ({policy.escalation}) fails {check!r}: {msg}")


def _snapshot(state: State) -> dict[str, np.ndarray]:
    return {k: np.array(to_numpy(v), copy=True) for k, v in state.items()}


def _equal(a: Any, b: Any, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if rtol == 0.0 and atol == 0.0 or a.dtype.kind in "biu":
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


def _compare_runs(
    check: str, policy: Policy, a: EpisodeRun, b: EpisodeRun, *, rtol: float = 0.0, atol: float = 0.0
) -> None:
    if not _equal(a.routes, b.routes):
        t, lane = np.argwhere(a.routes != b.routes)[0]
        raise _fail(
            check, policy, f"routes differ first at step {t}, lane {lane}: {a.routes[t, lane]} vs {b.routes[t, lane]}"
        )
    if a.state.keys() != b.state.keys():
        raise _fail(check, policy, f"final states have different keys: {sorted(a.state)} vs {sorted(b.state)}")
    for key in a.state:
        if not _equal(a.state[key], b.state[key], rtol=rtol, atol=atol):
            raise _fail(check, policy, f"final state {key!r} differs: {a.state[key]!r} vs {b.state[key]!r}")


class _StepChecker:
    """Per-decision checks: routes in range, dead lanes untouched, state not mutated, shapes."""

    def __init__(self, policy: Policy, num_models: int):
        self.policy, self.num_models = policy, num_models
        self.before: dict[str, np.ndarray] = {}
        self.decisions = 0

    def snapshot(self, state: State) -> None:
        self.before = _snapshot(state)

    def __call__(self, t: int, before: State, step: Step, routes: Any, after: State) -> None:
        p, n = self.policy, step.n
        live = np.asarray(to_numpy(step.live), dtype=bool)
        model = np.asarray(to_numpy(step.model))
        r = np.asarray(to_numpy(routes))
        where = f"at step {t}"
        if r.shape != (n,) or r.dtype.kind not in "iu":
            raise _fail(
                "routes", p, f"{where}: routes must be an integer array of shape ({n},), got {r.dtype} {r.shape}"
            )
        if np.any(r < 0) or np.any(r >= self.num_models):
            lane = int(np.argwhere((r < 0) | (r >= self.num_models))[0, 0])
            raise _fail("routes", p, f"{where}, lane {lane}: route {r[lane]} is not one of {self.num_models} models")
        if np.any(r[~live] != model[~live]):
            lane = int(np.argwhere(~live & (r != model))[0, 0])
            raise _fail(
                "dead_lanes",
                p,
                f"{where}, lane {lane}: a finished lane must route to its own model {model[lane]}, got {r[lane]}",
            )
        now = _snapshot(before)
        if now.keys() != self.before.keys():
            raise _fail("purity", p, f"{where}: decide() added or removed keys of the state it was given")
        for key, value in now.items():
            if not _equal(value, self.before[key]):
                raise _fail("purity", p, f"{where}: decide() mutated the input state {key!r} in place")
        if set(after) != set(before):
            raise _fail("state_shape", p, f"{where}: state keys changed from {sorted(before)} to {sorted(after)}")
        new = _snapshot(after)
        for key, value in new.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise _fail(
                    "state_shape",
                    p,
                    f"{where}: state {key!r} must have a leading lane dimension {n}, got {value.shape}",
                )
            if value.shape != now[key].shape or value.dtype != now[key].dtype:
                raise _fail(
                    "state_shape",
                    p,
                    f"{where}: state {key!r} changed from {now[key].dtype}{now[key].shape} "
                    f"to {value.dtype}{value.shape}",
                )
            if not _equal(value[~live], now[key][~live]):
                lane = int(np.flatnonzero(~live)[0])
                raise _fail(
                    "dead_lanes", p, f"{where}: state {key!r} of finished lane(s) changed (first dead lane {lane})"
                )
        self.decisions += 1
        self.before = new


def _rebuild(policy: Policy, **changes: Any) -> Policy:
    params = dict(policy.params)
    kwargs = {"escalation": policy.escalation, "initial_model": policy.initial_model}
    kwargs.update({k: changes.pop(k) for k in ("escalation", "initial_model") if k in changes})
    params.update(changes)
    return type(policy)(**kwargs, **params)


def _per_lane(policy: Policy, variants: Sequence[Mapping[str, Any]]) -> Policy:
    """One policy whose numeric parameters are per-lane arrays, lane ``i`` set as ``variants[i]``."""
    decl = {p.name: p for p in policy.parameters}
    base = dict(policy.params)
    arrays: dict[str, Any] = {}
    for name in sorted({k for v in variants for k in v}):
        if name not in decl:
            raise ConformanceError(f"policy {policy.name!r}: lane variant names unknown parameter {name!r}")
        kind = decl[name].kind
        values = [v.get(name, base[name]) for v in variants]
        dtype = {"int": np.int64, "bool": np.bool_}.get(kind, np.float64)
        arrays[name] = np.asarray(values, dtype=dtype)
    return _rebuild(policy, **arrays)


def _lane_params_equal_scalars(policy: Policy, n: int) -> Policy | None:
    """The same configuration with every per-lane-capable scalar given as an array."""
    arrays = {}
    for p in policy.parameters:
        value = policy.params[p.name]
        if not p.lane or p.kind not in ("float", "int", "bool") or value is None or is_lane_array(value):
            continue
        dtype = {"int": np.int64, "bool": np.bool_}.get(p.kind, np.float64)
        arrays[p.name] = np.broadcast_to(np.asarray(value, dtype=dtype), (n, *np.shape(value))).copy()
    return _rebuild(policy, **arrays) if arrays else None


def _registry_for(policy: Policy) -> Any:
    from ead_sdk.registry import PolicyRegistry

    registry = PolicyRegistry(entry_points=False)
    cls = type(policy)

    @hookimpl
    def register_policies(register: Any) -> None:
        register(cls)

    registry.add_plugin(SimpleNamespace(register_policies=register_policies), name=f"check_policy:{cls.name}")
    registry.check()
    return registry


def _torch() -> Any:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


def check_policy(
    policy_or_class: Policy | type[Policy],
    *,
    params: Mapping[str, Any] | None = None,
    lane_variants: Sequence[Mapping[str, Any]] | None = None,
    num_models: int | None = None,
    lanes: int = 4,
    steps: int = 24,
    vocab: int = 48,
    top_k: int = 8,
    seed: int = 0,
    escalations: Sequence[str] = ESCALATIONS,
    torch: bool | None = None,
    registry: Any = None,
) -> ConformanceReport:
    """Check that a policy honours the contract; raise `ConformanceError` naming what broke.

    Checked on synthetic episodes with full-vocabulary and top-k log-probs, lanes that finish
    early, and every escalation mode: routes are integers in range; finished lanes keep their
    model and their state; ``decide`` never mutates its input; state arrays keep a leading lane
    dimension, keys, dtypes and shapes; two runs agree (determinism); a batch equals its lanes
    run one by one, and `select_lanes`/`concat_states` round-trip its state; scalar parameters
    equal the same values given per lane; each of ``lane_variants`` run as one lane of a
    batch equals its own run; ``spec()`` survives JSON and `load_policy`; numpy and torch agree.

    Args:
        policy_or_class: a policy, or a class built with ``params``.
        params: constructor arguments when a class is given.
        lane_variants: parameter overrides, one dict per lane, for the per-lane check.
        num_models: models to route over (default: the policy's rung count, else 2).
        lanes: lanes per synthetic episode.
        steps: positions per synthetic episode.
        vocab: vocabulary size of the synthetic distributions.
        top_k: log-probs kept in the top-k episode.
        seed: seed of the synthetic episodes.
        escalations: the escalation modes to check.
        torch: compare with torch (default: when torch is installed).
        registry: a `PolicyRegistry` providing the policy for the spec check (default: a
            private one holding just this class).
    """
    if isinstance(policy_or_class, type):
        base = policy_or_class(**dict(params or {}))
    else:
        if params:
            raise ConformanceError("check_policy: pass params only with a policy class")
        base = policy_or_class
    rungs = base.num_rungs()
    models = num_models or rungs or (2 if base.max_models is None else min(2, base.max_models))
    base.check_models(models)
    torch_mod = _torch() if torch in (None, True) else None
    if torch and torch_mod is None:
        raise ConformanceError("check_policy(torch=True): torch is not installed")
    skipped = [] if torch_mod is not None else ["numpy_vs_torch"]
    if not lane_variants:
        skipped.append("lane_variants")
    episodes: list[Episode] = [
        make_episode(seed, lanes=lanes, steps=steps, num_models=models, vocab=vocab, top_k=None),
        make_episode(seed + 1, lanes=lanes, steps=steps, num_models=models, vocab=vocab, top_k=top_k),
    ]
    decisions = 0
    for escalation in escalations:
        policy = _rebuild(base, escalation=escalation)
        reg = registry or _registry_for(policy)
        for episode in episodes:
            checker = _StepChecker(policy, models)
            state = policy.init_state(episode.lanes, np)
            checker.snapshot(state)
            run = run_episode(policy, episode, state=state, hook=checker)
            decisions += checker.decisions
            _compare_runs("determinism", policy, run, run_episode(policy, episode))

            singles = [run_episode(policy, episode.select([i])) for i in range(episode.lanes)]
            for i, single in enumerate(singles):
                if not _equal(run.routes[:, i], single.routes[:, 0]):
                    t = int(np.argwhere(run.routes[:, i] != single.routes[:, 0])[0, 0])
                    raise _fail("batched_vs_lanes", policy, f"lane {i} routes differently in a batch from step {t}")
                for key, value in single.state.items():
                    if not _equal(run.state[key][i], value[0]):
                        raise _fail(
                            "batched_vs_lanes", policy, f"lane {i}: final state {key!r} differs alone and in a batch"
                        )
            parts = [select_lanes(run.state, [i]) for i in reversed(range(episode.lanes))]
            joined = select_lanes(concat_states(parts), list(reversed(range(episode.lanes))))
            for key in run.state:
                if not _equal(joined[key], run.state[key]):
                    raise _fail("select_concat", policy, f"state {key!r} does not survive select_lanes/concat_states")

            same = _lane_params_equal_scalars(policy, episode.lanes)
            if same is not None:
                _compare_runs("lane_params", policy, run, run_episode(same, episode))

            if lane_variants:
                sub = episode.select([i % episode.lanes for i in range(len(lane_variants))])
                batched = run_episode(_per_lane(policy, lane_variants), sub)
                for i, variant in enumerate(lane_variants):
                    alone = run_episode(_rebuild(policy, **dict(variant)), sub.select([i]))
                    if not _equal(batched.routes[:, i], alone.routes[:, 0]):
                        raise _fail(
                            "lane_variants",
                            policy,
                            f"lane {i} with {dict(variant)} routes differently from its own run",
                        )

            from ead_sdk.specs import load_policy

            spec = policy.spec()
            try:
                text = json.dumps(spec)
            except TypeError as exc:
                raise _fail("spec_roundtrip", policy, f"spec() is not JSON-able: {exc}") from None
            again = load_policy(json.loads(text), registry=reg)
            if type(again) is not type(policy) or again.spec() != json.loads(text):
                raise _fail("spec_roundtrip", policy, f"load_policy(spec()) gives {again.spec()!r}, not {spec!r}")
            _compare_runs("spec_roundtrip", policy, run, run_episode(again, episode))

            if torch_mod is not None:
                _compare_runs(
                    "numpy_vs_torch", policy, run, run_episode(policy, episode, torch_mod), rtol=1e-4, atol=1e-5
                )
    checks = tuple(c for c in CHECKS if c not in skipped)
    return ConformanceReport(base.name, checks, decisions, tuple(skipped))
