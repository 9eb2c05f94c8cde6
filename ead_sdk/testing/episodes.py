"""Synthetic episodes and a closed-loop driver: run any policy as a decoder would, without models.

An `Episode` holds, for ``n`` lanes over ``T`` positions, what each of ``M`` models would show a
policy (entropy, sorted log-probs, whether the models' top tokens disagree), scored along one
fixed trajectory, like a recorded trace. `run_episode` feeds a policy the signals of whichever
model each lane is on, follows its routes, and records who emitted every token under the
policy's escalation mode. Everything here needs numpy only; torch is used when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ead_sdk.arrays import as_namespace, to_numpy
from ead_sdk.escalation import rule
from ead_sdk.interface import Policy, State, Step
from ead_sdk.signals import entropy


@dataclass(frozen=True)
class Episode:
    """Per-model signals of ``n`` lanes over ``T`` positions.

    Attributes:
        entropy: ``(T, n, M)`` entropy in nats of each model's distribution.
        logprobs: ``(T, n, M, K)`` log-probabilities sorted in decreasing order: the full
            vocabulary (``token_ids is None``) or its top-K.
        token_ids: ``(T, n, M, K)`` vocabulary ids of ``logprobs`` for a top-K, else ``None``.
        disagree: ``(T, n)`` bool: the smallest and the largest model's top tokens differ.
        lengths: ``(n,)`` tokens in each lane; a lane is live at positions ``t < lengths``.
        vocab_size: the vocabulary size.
    """

    entropy: np.ndarray
    logprobs: np.ndarray
    token_ids: np.ndarray | None
    disagree: np.ndarray
    lengths: np.ndarray
    vocab_size: int

    @property
    def steps(self) -> int:
        """``T``, the number of positions."""
        return int(self.entropy.shape[0])

    @property
    def lanes(self) -> int:
        """``n``, the number of lanes."""
        return int(self.entropy.shape[1])

    @property
    def num_models(self) -> int:
        """``M``, the number of models."""
        return int(self.entropy.shape[2])

    def select(self, lanes: Sequence[int]) -> Episode:
        """The episode of the given lanes only, in that order."""
        idx = np.asarray(lanes, dtype=np.int64)
        return replace(
            self,
            entropy=self.entropy[:, idx],
            logprobs=self.logprobs[:, idx],
            token_ids=None if self.token_ids is None else self.token_ids[:, idx],
            disagree=self.disagree[:, idx],
            lengths=self.lengths[idx],
        )

    def step(self, t: int, model: np.ndarray, *, future: bool = True) -> Step:
        """The numpy `Step` at position ``t`` for lanes on models ``model``."""
        lane = np.arange(self.lanes)
        nxt = self.disagree[t + 1] if t + 1 < self.steps else np.zeros(self.lanes, dtype=bool)
        return Step(
            entropy=self.entropy[t, lane, model],
            model=model.astype(np.int64),
            index=np.full(self.lanes, t, dtype=np.int64),
            live=t < self.lengths,
            logprobs=self.logprobs[t, lane, model],
            token_ids=None if self.token_ids is None else self.token_ids[t, lane, model],
            vocab_size=self.vocab_size,
            future={"disagree": nxt} if future else None,
        )


def make_episode(
    rng: np.random.Generator | int,
    *,
    lanes: int = 4,
    steps: int = 24,
    num_models: int = 2,
    vocab: int = 48,
    top_k: int | None = None,
    mask_fraction: float = 0.1,
    min_length: int = 1,
) -> Episode:
    """A random episode with easy and hard regimes.

    Each lane alternates between easy stretches (peaked distributions) and hard ones (flat
    distributions); larger models are more peaked and mostly agree with the smaller ones. A
    fraction of each row is masked to ``-inf``. Lanes finish at random lengths.

    Args:
        rng: a numpy generator or a seed.
        lanes: number of lanes.
        steps: number of positions.
        num_models: number of models.
        vocab: vocabulary size.
        top_k: keep only the top-k log-probs (a trace); ``None`` keeps the full vocabulary.
        mask_fraction: share of tokens masked to ``-inf`` in each row (the top token never is).
        min_length: the shortest lane.
    """
    rng = np.random.default_rng(rng)
    hard = np.zeros((steps, lanes), dtype=bool)
    state = rng.random(lanes) < 0.5
    for t in range(steps):
        flip = rng.random(lanes) < 0.2
        state = np.where(flip, ~state, state)
        hard[t] = state
    sharp = np.where(hard, rng.uniform(0.2, 1.0, (steps, lanes)), rng.uniform(3.0, 8.0, (steps, lanes)))
    base = rng.normal(size=(steps, lanes, vocab))
    logits = np.empty((steps, lanes, num_models, vocab))
    for m in range(num_models):
        noise = rng.normal(size=(steps, lanes, vocab)) * (0.6 / (1 + m))
        logits[:, :, m] = (base + noise) * (sharp * (1 + 0.5 * m))[..., None]
    masked = rng.random(logits.shape) < mask_fraction
    top = logits == logits.max(axis=-1, keepdims=True)
    logits = np.where(masked & ~top, -np.inf, logits)
    h = entropy(logits, "nats", validate=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    order = np.argsort(-logprobs, axis=-1, kind="stable")
    sorted_lp = np.take_along_axis(logprobs, order, axis=-1)
    disagree = order[:, :, 0, 0] != order[:, :, -1, 0]
    if top_k is not None:
        k = min(top_k, vocab)
        sorted_lp, token_ids = sorted_lp[..., :k], order[..., :k]
    else:
        token_ids = None
    lengths = rng.integers(min(min_length, steps), steps + 1, size=lanes)
    lengths[rng.integers(lanes)] = steps  # at least one lane runs to the end
    return Episode(h, sorted_lp, token_ids, disagree, lengths, vocab)


@dataclass(frozen=True)
class EpisodeRun:
    """What happened when a policy drove an episode (numpy, ``(T, n)`` each).

    Attributes:
        routes: the model each decision picked for the next token.
        models: the model whose signals the policy was shown at each position.
        emitted: the model that emitted each position's token (a ``"retry"`` escalation makes
            the larger model re-emit it); ``-1`` after a lane finished.
        live: whether the lane was live at each position.
        state: the final state, as numpy arrays.
    """

    routes: np.ndarray
    models: np.ndarray
    emitted: np.ndarray
    live: np.ndarray
    state: dict[str, np.ndarray]


StepHook = Callable[[int, State, Step, Any, State], None]


def decide_along(policy: Policy, entropies: Sequence[float], models: Sequence[int]) -> list[int]:
    """One lane's routes along a given path: the policy is shown ``entropies[t]`` from ``models[t]``.

    The path is fixed, whatever the policy picks, so a test can compare each decision with a
    plain-Python reference of the rule on the same inputs.
    """
    state = policy.init_state(1, np)
    out = []
    for t, (e, m) in enumerate(zip(entropies, models, strict=False)):
        step = Step(entropy=np.array([e]), model=np.array([m]), index=np.array([t]), live=np.array([True]))
        r, state = policy.decide(state, step)
        out.append(int(np.asarray(to_numpy(r))[0]))
    return out


def to_namespace(step: Step, xp: Any, device: Any = None) -> Step:
    """The same `Step` with its arrays in namespace ``xp`` (floats in its default dtype)."""
    xp = as_namespace(xp)
    kw = {"device": device} if device is not None else {}

    def conv(a: Any) -> Any:
        if a is None:
            return None
        a = np.asarray(a)
        if a.dtype.kind == "f":
            return xp.asarray(a, dtype=xp.asarray(0.0).dtype, **kw)
        return xp.asarray(a, **kw)

    return replace(
        step,
        entropy=conv(step.entropy),
        model=conv(step.model),
        index=conv(step.index),
        live=conv(step.live),
        logprobs=conv(step.logprobs),
        token_ids=conv(step.token_ids),
        token=conv(step.token),
        future=None if step.future is None else {k: conv(v) for k, v in step.future.items()},
    )


def run_episode(
    policy: Policy,
    episode: Episode,
    xp: Any = np,
    *,
    device: Any = None,
    state: State | None = None,
    hook: StepHook | None = None,
) -> EpisodeRun:
    """Drive ``episode`` with ``policy`` in closed loop, as the decode loop would.

    Every lane starts on ``policy.initial_model``; after each decision a live lane moves to
    the routed model. ``Step.future`` is filled only for replay-only policies. ``hook`` is
    called after each decision with ``(t, state_before, step, routes, state_after)``.
    """
    xp = as_namespace(xp)
    n = episode.lanes
    state = policy.init_state(n, xp, device) if state is None else state
    model = np.full(n, policy.initial_model, dtype=np.int64)
    shape = (episode.steps, n)
    routes_all = np.zeros(shape, dtype=np.int64)
    models_all = np.zeros(shape, dtype=np.int64)
    emitted = np.full(shape, -1, dtype=np.int64)
    live_all = np.zeros(shape, dtype=bool)
    for t in range(episode.steps):
        step_np = episode.step(t, model, future=policy.replay_only)
        step = step_np if xp.__name__.endswith("numpy") and device is None else to_namespace(step_np, xp, device)
        before = state
        routes, state = policy.decide(state, step)
        if hook is not None:
            hook(t, before, step, routes, state)
        r = np.asarray(to_numpy(routes), dtype=np.int64)
        live = step_np.live
        routes_all[t], models_all[t], live_all[t] = r, model, live
        escalation = rule(policy.escalation)
        emitted[t] = np.where(live, escalation.emitter(r, model), -1)
        model = np.where(live, escalation.next_model(r, model), model)
    return EpisodeRun(routes_all, models_all, emitted, live_all, {k: to_numpy(v) for k, v in state.items()})
