"""What the lane hand-off router returns: `GenerateResult`'s shape, plus hand-offs and the policy's view.

Each lane's `HandoffLaneResult` is a `LaneResult` (tokens, emitting models, cost report, finish
reason, text) that also lists its hand-offs (`Handoff`: where, from which model to which, what
the new request sent and how long its first token took) and a `DecisionLog` of what the policy
saw at each decision, so its routes can be replayed offline on the same signals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ead_sdk.arrays import to_numpy
from ead_sdk.decision import decide_checked, init_checked
from ead_sdk.decode import GenerateResult, LaneResult
from ead_sdk.interface import Policy, Step


@dataclass(frozen=True)
class Handoff:
    """One change of engine in a lane: a new request on ``to_model`` continues the lane.

    Attributes:
        position: the generated position the new request computes first.
        from_model: the model whose stream was closed.
        to_model: the model of the new request.
        reason: ``"switch"`` (the policy routed the next token elsewhere), ``"retry"`` (a larger
            model recomputes the position that escalated) or ``"return"`` (after a
            ``retry_token`` escalation the lane goes back to the model that escalated).
        prompt_tokens: the new request's prompt length (the lane's prompt and tokens so far).
        catchup: tokens of that prompt the new model had not consumed on this lane before (what
            its prefix cache cannot hold), besides the one step.
        latency_s: seconds from the decision to the new engine's first token (``None`` when no
            token came: the lane ended or failed first).
    """

    position: int
    from_model: int
    to_model: int
    reason: str
    prompt_tokens: int
    catchup: int
    latency_s: float | None = None


@dataclass(frozen=True)
class DecisionLog:
    """What a lane's policy saw at each of its decisions, in order (numpy arrays, one row per decision).

    Attributes:
        index: the generated position of the token decided on.
        model: the model that produced it.
        signal: the signal shown as `Step.entropy` (exact entropy or its top-k estimate, nats).
        token: the token id.
        route: the model the policy picked for the next position.
        logprobs: ``(D, k)`` the top-k log-probabilities shown, when the router asked for them.
        token_ids: ``(D, k)`` their token ids.
        vocab_size: the vocabulary size shown in `Step.vocab_size`.
    """

    index: np.ndarray
    model: np.ndarray
    signal: np.ndarray
    token: np.ndarray
    route: np.ndarray
    logprobs: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    vocab_size: int | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __repr__(self) -> str:
        return f"DecisionLog({len(self)} decisions, top-k {0 if self.logprobs is None else self.logprobs.shape[1]})"

    def steps(self) -> Iterator[Step]:
        """The one-lane `Step` of each decision, as the policy was shown it."""
        for d in range(len(self)):
            yield Step(
                entropy=self.signal[d : d + 1],
                model=self.model[d : d + 1],
                index=self.index[d : d + 1],
                live=np.ones(1, bool),
                logprobs=None if self.logprobs is None else self.logprobs[d : d + 1],
                token_ids=None if self.token_ids is None else self.token_ids[d : d + 1],
                token=self.token[d : d + 1],
                vocab_size=self.vocab_size,
            )

    def replay(self, policy: Policy) -> np.ndarray:
        """The routes ``policy`` picks when shown these steps one by one from a fresh one-lane state.

        For the router's own policy they equal `route`: the router decides lanes in batches,
        a policy's lanes are independent, so one lane alone must route the same.
        """
        state = init_checked(policy, 1, np)
        routes = np.zeros(len(self), np.int64)
        for d, step in enumerate(self.steps()):
            r, state = decide_checked(policy, state, step, 1, int(step.index[0]))
            routes[d] = int(np.asarray(to_numpy(r))[0])
        return routes


@dataclass(frozen=True)
class HandoffLaneResult(LaneResult):
    """One lane routed across serving engines: a `LaneResult` with its hand-offs and decisions.

    ``finish_reason`` is ``"stop"``, ``"length"``, ``"error"`` (``error`` holds the exception,
    e.g. an `ead_sdk.errors.UpstreamError` naming the engine and lane) or ``"cancelled"``.

    Attributes:
        lane: the lane's number in its router.
        handoffs: each change of engine, in order.
        decisions: what the policy saw at each decision (see `DecisionLog.replay`).
        error: what ended the lane early, or ``None``.
    """

    lane: int = 0
    handoffs: tuple[Handoff, ...] = ()
    decisions: DecisionLog | None = field(default=None, compare=False)
    error: BaseException | None = field(default=None, compare=False)

    @property
    def handoff_latencies(self) -> tuple[float, ...]:
        """Seconds from each hand-off's decision to the new engine's first token."""
        return tuple(h.latency_s for h in self.handoffs if h.latency_s is not None)


@dataclass(frozen=True)
class HandoffResult(GenerateResult):
    """Every lane of a `HandoffRouter.generate` run (`HandoffLaneResult`s) and the summed cost report."""

    @property
    def handoff_latencies(self) -> tuple[float, ...]:
        """Every hand-off latency of every lane, in seconds."""
        return tuple(v for lane in self.lanes for v in lane.handoff_latencies)  # type: ignore[attr-defined]

    @property
    def errors(self) -> dict[int, BaseException]:
        """The lanes that failed, by prompt index, with their errors."""
        return {i: lane.error for i, lane in enumerate(self.lanes) if getattr(lane, "error", None) is not None}
