"""The conformance kit every policy author runs in their own tests: one function per check.

Each check drives the policy through synthetic episodes (full-vocabulary and top-k log-probs,
lanes that finish early, every escalation mode) and checks one part of the contract the SDK
relies on. `check_policy` runs them all and reports every failure; `parametrize_with_checks`
makes each check its own pytest test, to select or mark ``xfail`` by id.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any
from unittest import SkipTest

import numpy as np

from ead_sdk.arrays import to_numpy
from ead_sdk.errors import ConformanceError
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import ESCALATIONS, Policy, State, Step
from ead_sdk.params import is_lane_array
from ead_sdk.state import concat_states, select_lanes
from ead_sdk.testing.episodes import Episode, EpisodeRun, make_episode, run_episode


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


@dataclass(frozen=True)
class CheckOptions:
    """How the checks drive a policy (see `check_policy` for each field)."""

    lane_variants: tuple[Mapping[str, Any], ...] = ()
    num_models: int | None = None
    lanes: int = 4
    steps: int = 24
    vocab: int = 48
    top_k: int = 8
    seed: int = 0
    escalations: tuple[str, ...] = ESCALATIONS
    torch: bool | None = None
    registry: Any = None

    def models(self, policy: Policy) -> int:
        """Models to route over: the option, else the policy's rung count, else 2."""
        return self.num_models or policy.num_rungs() or (2 if policy.max_models is None else min(2, policy.max_models))

    def episodes(self, num_models: int) -> list[Episode]:
        """A full-vocabulary and a top-k episode."""
        kw = {"lanes": self.lanes, "steps": self.steps, "num_models": num_models, "vocab": self.vocab}
        return [make_episode(self.seed, top_k=None, **kw), make_episode(self.seed + 1, top_k=self.top_k, **kw)]

    def torch_module(self) -> Any:
        """torch, when the checks should use it (``torch=None``: when installed)."""
        mod = _torch() if self.torch in (None, True) else None
        if self.torch and mod is None:
            raise ConformanceError("check_policy(torch=True): torch is not installed")
        return mod


def _cases(policy: Policy, options: CheckOptions) -> Iterator[tuple[Policy, Episode]]:
    """The policy in each escalation mode, on each episode."""
    models = options.models(policy)
    policy.check_models(models)
    episodes = options.episodes(models)
    for escalation in options.escalations:
        variant = _rebuild(policy, escalation=escalation)
        for episode in episodes:
            yield variant, episode


class _StepHook:
    """Calls ``per_step`` at each decision with the snapshot of the state taken before it."""

    def __init__(self, policy: Policy, models: int, per_step: Callable[..., None], state: State):
        self.policy, self.models, self.per_step = policy, models, per_step
        self.seen = _snapshot(state)
        self.decisions = 0

    def __call__(self, t: int, given: State, step: Step, routes: Any, after: State) -> None:
        routes = np.asarray(to_numpy(routes))
        self.per_step(self.policy, self.models, f"at step {t}", step, routes, self.seen, given, after)
        self.seen = _snapshot(after)
        self.decisions += 1


def _step_check(check: str, per_step: Callable[..., None], doc: str) -> Callable[[Policy, CheckOptions], int]:
    """A check run at every decision of every case, by a hook on the closed-loop driver."""

    def run(policy: Policy, options: CheckOptions) -> int:
        decisions = 0
        for p, episode in _cases(policy, options):
            state = p.init_state(episode.lanes, np)
            hook = _StepHook(p, options.models(p), per_step, state)
            run_episode(p, episode, state=state, hook=hook)
            decisions += hook.decisions
        return decisions

    run.__name__, run.__doc__ = f"check_{check}", doc
    return run


def _routes(p: Policy, models: int, where: str, step: Step, r: np.ndarray, seen: dict, given: State, after: State):
    n = step.n
    if r.shape != (n,) or r.dtype.kind not in "iu":
        raise _fail("routes", p, f"{where}: routes must be an integer array of shape ({n},), got {r.dtype} {r.shape}")
    if np.any(r < 0) or np.any(r >= models):
        lane = int(np.argwhere((r < 0) | (r >= models))[0, 0])
        raise _fail("routes", p, f"{where}, lane {lane}: route {r[lane]} is not one of {models} models")


def _dead_lanes(p: Policy, models: int, where: str, step: Step, r: np.ndarray, seen: dict, given: State, after: State):
    live = np.asarray(to_numpy(step.live), dtype=bool)
    model = np.asarray(to_numpy(step.model))
    if np.any(r[~live] != model[~live]):
        lane = int(np.argwhere(~live & (r != model))[0, 0])
        msg = f"{where}, lane {lane}: a finished lane must route to its own model {model[lane]}, got {r[lane]}"
        raise _fail("dead_lanes", p, msg)
    for key, value in _snapshot(after).items():
        if key in seen and value.shape == seen[key].shape and not _equal(value[~live], seen[key][~live]):
            lane = int(np.flatnonzero(~live)[0])
            raise _fail("dead_lanes", p, f"{where}: state {key!r} of finished lane(s) changed (first dead lane {lane})")


def _purity(p: Policy, models: int, where: str, step: Step, r: np.ndarray, seen: dict, given: State, after: State):
    now = _snapshot(given)
    if now.keys() != seen.keys():
        raise _fail("purity", p, f"{where}: decide() added or removed keys of the state it was given")
    for key, value in now.items():
        if not _equal(value, seen[key]):
            raise _fail("purity", p, f"{where}: decide() mutated the input state {key!r} in place")


def _state_shape(p: Policy, models: int, where: str, step: Step, r: np.ndarray, seen: dict, given: State, after: State):
    n = step.n
    if set(after) != set(seen):
        raise _fail("state_shape", p, f"{where}: state keys changed from {sorted(seen)} to {sorted(after)}")
    for key, value in _snapshot(after).items():
        if value.ndim == 0 or value.shape[0] != n:
            msg = f"{where}: state {key!r} must have a leading lane dimension {n}, got {value.shape}"
            raise _fail("state_shape", p, msg)
        old = seen[key]
        if value.shape != old.shape or value.dtype != old.dtype:
            msg = f"{where}: state {key!r} changed from {old.dtype}{old.shape} to {value.dtype}{value.shape}"
            raise _fail("state_shape", p, msg)


check_routes = _step_check("routes", _routes, "Routes are an integer ``(n,)`` array of model indices in range.")
check_dead_lanes = _step_check("dead_lanes", _dead_lanes, "Finished lanes keep their model and their state.")
check_purity = _step_check("purity", _purity, "``decide`` never mutates the state it is given.")
check_state_shape = _step_check(
    "state_shape", _state_shape, "State arrays keep their keys, a leading lane dimension, dtypes and shapes."
)


def check_determinism(policy: Policy, options: CheckOptions) -> int:
    """Two runs of the same episode give the same routes and state."""
    for p, episode in _cases(policy, options):
        _compare_runs("determinism", p, run_episode(p, episode), run_episode(p, episode))
    return 0


def check_batched_vs_lanes(policy: Policy, options: CheckOptions) -> int:
    """A batch routes each lane as that lane alone would be routed."""
    for p, episode in _cases(policy, options):
        run = run_episode(p, episode)
        for i in range(episode.lanes):
            single = run_episode(p, episode.select([i]))
            if not _equal(run.routes[:, i], single.routes[:, 0]):
                t = int(np.argwhere(run.routes[:, i] != single.routes[:, 0])[0, 0])
                raise _fail("batched_vs_lanes", p, f"lane {i} routes differently in a batch from step {t}")
            for key, value in single.state.items():
                if not _equal(run.state[key][i], value[0]):
                    raise _fail("batched_vs_lanes", p, f"lane {i}: final state {key!r} differs alone and in a batch")
    return 0


def check_select_concat(policy: Policy, options: CheckOptions) -> int:
    """`select_lanes` and `concat_states` round-trip the state."""
    for p, episode in _cases(policy, options):
        run = run_episode(p, episode)
        parts = [select_lanes(run.state, [i]) for i in reversed(range(episode.lanes))]
        joined = select_lanes(concat_states(parts), list(reversed(range(episode.lanes))))
        for key in run.state:
            if not _equal(joined[key], run.state[key]):
                raise _fail("select_concat", p, f"state {key!r} does not survive select_lanes/concat_states")
    return 0


def check_lane_params(policy: Policy, options: CheckOptions) -> int:
    """Scalar parameters route exactly as the same values given per lane."""
    for p, episode in _cases(policy, options):
        same = _lane_params_equal_scalars(p, episode.lanes)
        if same is not None:
            _compare_runs("lane_params", p, run_episode(p, episode), run_episode(same, episode))
    return 0


def check_lane_variants(policy: Policy, options: CheckOptions) -> int:
    """Each of ``lane_variants``, run as one lane of a batch, routes as its own run."""
    variants = options.lane_variants
    if not variants:
        raise SkipTest("lane_variants: no lane variants given")
    for p, episode in _cases(policy, options):
        sub = episode.select([i % episode.lanes for i in range(len(variants))])
        batched = run_episode(_per_lane(p, variants), sub)
        for i, variant in enumerate(variants):
            alone = run_episode(_rebuild(p, **dict(variant)), sub.select([i]))
            if not _equal(batched.routes[:, i], alone.routes[:, 0]):
                raise _fail("lane_variants", p, f"lane {i} with {dict(variant)} routes differently from its own run")
    return 0


def check_spec_roundtrip(policy: Policy, options: CheckOptions) -> int:
    """``spec()`` survives JSON and `load_policy`, and the rebuilt policy routes the same."""
    from ead_sdk.specs import load_policy

    for p, episode in _cases(policy, options):
        spec = p.spec()
        try:
            text = json.dumps(spec)
        except TypeError as exc:
            raise _fail("spec_roundtrip", p, f"spec() is not JSON-able: {exc}") from None
        again = load_policy(json.loads(text), registry=options.registry or _registry_for(p))
        if type(again) is not type(p) or again.spec() != json.loads(text):
            raise _fail("spec_roundtrip", p, f"load_policy(spec()) gives {again.spec()!r}, not {spec!r}")
        _compare_runs("spec_roundtrip", p, run_episode(p, episode), run_episode(again, episode))
    return 0


def _need_torch(options: CheckOptions, check: str) -> Any:
    torch = options.torch_module()
    if torch is None:
        raise SkipTest(f"{check}: torch is not installed")
    return torch


def check_numpy_vs_torch(policy: Policy, options: CheckOptions) -> int:
    """The policy routes alike on numpy and on torch (to float tolerance in the state)."""
    torch = _need_torch(options, "numpy_vs_torch")
    for p, episode in _cases(policy, options):
        _compare_runs(
            "numpy_vs_torch", p, run_episode(p, episode), run_episode(p, episode, torch), rtol=1e-4, atol=1e-5
        )
    return 0


class _TorchNamespaceHook:
    """Refuses routes or state that are not torch tensors on the device of the step's arrays."""

    def __init__(self, policy: Policy):
        self.policy, self.decisions = policy, 0

    def __call__(self, t: int, given: State, step: Step, routes: Any, after: State) -> None:
        import torch

        device = step.entropy.device
        for what, value in [("routes", routes), *((f"state {key!r}", v) for key, v in after.items())]:
            if not isinstance(value, torch.Tensor) or value.device != device:
                got = f"a tensor on {value.device}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
                msg = f"at step {t}: on torch inputs ({device}) decide() returned {what} as {got}"
                raise _fail("torch_namespace", self.policy, msg)
        self.decisions += 1


def check_torch_namespace(policy: Policy, options: CheckOptions) -> int:
    """On torch inputs, routes and state are torch tensors on the inputs' device (no numpy detour)."""
    torch = _need_torch(options, "torch_namespace")
    decisions = 0
    for p, episode in _cases(policy, options):
        hook = _TorchNamespaceHook(p)
        run_episode(p, episode, torch, hook=hook)
        decisions += hook.decisions
    return decisions


class _NoSyncDecide:
    """The policy, with every ``decide`` run under `forbid_host_sync`."""

    def __init__(self, policy: Policy):
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def decide(self, state: State, step: Step) -> Any:
        from ead_sdk.integrations.host_sync import forbid_host_sync

        with forbid_host_sync():
            return self._policy.decide(state, step)


def check_host_sync(policy: Policy, options: CheckOptions) -> int:
    """``decide`` on torch tensors never synchronises with the host (``.item()``, ``bool(t)``...)."""
    torch = _need_torch(options, "host_sync")
    from ead_sdk.errors import HostSyncError

    for p, episode in _cases(policy, options):
        try:
            run_episode(_NoSyncDecide(p), episode, torch)  # type: ignore[arg-type]
        except HostSyncError as exc:
            raise _fail("host_sync", p, str(exc)) from None
    return 0


POLICY_CHECKS: dict[str, Callable[[Policy, CheckOptions], int]] = {
    "routes": check_routes,
    "dead_lanes": check_dead_lanes,
    "purity": check_purity,
    "state_shape": check_state_shape,
    "determinism": check_determinism,
    "batched_vs_lanes": check_batched_vs_lanes,
    "select_concat": check_select_concat,
    "lane_params": check_lane_params,
    "lane_variants": check_lane_variants,
    "spec_roundtrip": check_spec_roundtrip,
    "numpy_vs_torch": check_numpy_vs_torch,
    "torch_namespace": check_torch_namespace,
    "host_sync": check_host_sync,
}
"""Every check by name, in the order `check_policy` runs them."""

CHECKS: tuple[str, ...] = tuple(POLICY_CHECKS)
TORCH_CHECKS: tuple[str, ...] = ("numpy_vs_torch", "torch_namespace", "host_sync")


def _rebuild(policy: Policy, **changes: Any) -> Policy:
    params = dict(policy.params)
    kwargs = {"escalation": policy.escalation, "initial_model": policy.initial_model, "signal": policy.signal}
    kwargs.update({k: changes.pop(k) for k in ("escalation", "initial_model", "signal") if k in changes})
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


def _policy_of(policy_or_class: Policy | type[Policy], params: Mapping[str, Any] | None) -> Policy:
    if isinstance(policy_or_class, type):
        return policy_or_class(**dict(params or {}))
    if params:
        raise ConformanceError("check_policy: pass params only with a policy class")
    return policy_or_class


def _applicable(options: CheckOptions) -> list[str]:
    """The checks these options can run (torch checks need torch, lane_variants needs variants)."""
    torch = options.torch_module() is not None
    return [c for c in CHECKS if (torch or c not in TORCH_CHECKS) and (options.lane_variants or c != "lane_variants")]


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
    """Run every check on a policy; raise one `ConformanceError` naming every check that broke.

    Checked on synthetic episodes with full-vocabulary and top-k log-probs, lanes that finish
    early, and every escalation mode: routes are integers in range; finished lanes keep their
    model and their state; ``decide`` never mutates its input; state arrays keep a leading lane
    dimension, keys, dtypes and shapes; two runs agree (determinism); a batch equals its lanes
    run one by one, and `select_lanes`/`concat_states` round-trip its state; scalar parameters
    equal the same values given per lane; each of ``lane_variants`` run as one lane of a
    batch equals its own run; ``spec()`` survives JSON and `load_policy`; numpy and torch agree;
    on torch inputs ``decide`` returns torch tensors on their device and never syncs with the host.

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
        torch: run the torch checks (default: when torch is installed).
        registry: a `PolicyRegistry` providing the policy for the spec check (default: a
            private one holding just this class).
    """
    base = _policy_of(policy_or_class, params)
    options = CheckOptions(
        tuple(lane_variants or ()), num_models, lanes, steps, vocab, top_k, seed, tuple(escalations), torch, registry
    )
    base.check_models(options.models(base))
    run = _applicable(options)
    failures: list[ConformanceError] = []
    decisions = 0
    for name in run:
        try:
            decisions += POLICY_CHECKS[name](base, options)
        except ConformanceError as exc:
            failures.append(exc)
        except Exception as exc:  # noqa: BLE001 - a policy that breaks one check may crash another
            failures.append(_fail(name, base, f"raised {type(exc).__name__}: {exc}"))
    if failures:
        error = ConformanceError("; ".join(str(f) for f in failures))
        error.failures = failures  # type: ignore[attr-defined]
        raise error
    skipped = tuple(c for c in CHECKS if c not in run)
    return ConformanceReport(base.name, tuple(run), decisions, skipped)


def parametrize_with_checks(policies: Sequence[Policy | tuple[type[Policy], Mapping[str, Any]]], **options: Any) -> Any:
    """A ``pytest.mark.parametrize`` over every (policy, check) pair: one test id per check.

    Like scikit-learn's helper: each check becomes its own test, named ``<policy>-<check>``, that
    can be selected with ``-k`` or marked ``xfail``. The test receives the policy and the check,
    a callable taking the policy::

        @parametrize_with_checks([MyPolicy(threshold=1.0)], lane_variants=[{"threshold": 2.0}])
        def test_conformance(policy, check):
            check(policy)

    Args:
        policies: policy objects, or ``(class, params)`` pairs.
        **options: `check_policy`'s keyword options (``lane_variants``, ``num_models``...).
            Checks these options cannot run (torch ones without torch, ``lane_variants``
            without variants) are left out rather than skipped.
    """
    import pytest

    opts = CheckOptions(**{**options, "lane_variants": tuple(options.get("lane_variants") or ())})
    if "escalations" in options:
        opts = replace(opts, escalations=tuple(options["escalations"]))
    cases, ids = [], []
    for item in policies:
        policy = _policy_of(*item) if isinstance(item, tuple) else item
        for name in _applicable(opts):
            cases.append((policy, _bound_check(name, opts)))
            ids.append(f"{policy.name}-{name}")
    return pytest.mark.parametrize(("policy", "check"), cases, ids=ids)


def _bound_check(name: str, options: CheckOptions) -> Callable[[Policy], int]:
    def check(policy: Policy) -> int:
        return POLICY_CHECKS[name](policy, options)

    check.__name__ = f"check_{name}"
    return check
