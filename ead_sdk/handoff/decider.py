"""The batched decider: one policy state table for every lane of a router, one ``decide`` per batch.

Lanes submit the token they just received and wait for its route. Submissions that arrive in the
same turn of the event loop are decided together in one ``policy.decide`` call over the whole
table, with `Step.live` marking the lanes that produced a token. Lanes join (a fresh row from
``init_state(1)``) and leave (their row dropped) between batches, through `ead_sdk.state`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.arrays import to_numpy
from ead_sdk.decision import decide_checked, init_checked
from ead_sdk.errors import EadError, ModelCountError
from ead_sdk.interface import Policy, State, Step
from ead_sdk.serving import EngineToken
from ead_sdk.signal_spec import SignalSpec
from ead_sdk.signals import topk_entropy_estimate
from ead_sdk.state import concat_states, select_lanes


@dataclass
class Submission:
    """A lane's token waiting for its route: ``future`` receives ``(route, signal shown)``."""

    owner: Any
    index: int
    model: int
    token: EngineToken
    future: asyncio.Future


class BatchDecider:
    """Decide the routes of whatever lanes produced a token, in batches (see the module docstring).

    Args:
        policy: the router's policy (its lanes' rows all live in one state table).
        num_models: the number of engines, for the route check.
        signal: the policy's signal (exact entropy, or the top-k estimate computed here).
        top_k: top-k log-probabilities shown in `Step.logprobs` (0: none).
        vocab_size: shown in `Step.vocab_size` (and bounds the top-k estimate).
    """

    def __init__(self, policy: Policy, num_models: int, signal: SignalSpec, top_k: int, vocab_size: int):
        self.policy, self.num_models, self.signal = policy, num_models, signal
        self.top_k, self.vocab_size = top_k, vocab_size
        self._fresh = init_checked(policy, 1, np)
        self._k = max(top_k, signal.k or 0)
        self.state: State | None = None
        self.rows: list[Any] = []
        self._joins: list[Any] = []
        self._leaves: set[int] = set()
        self._pending: list[Submission] = []
        self._scheduled = False
        self.batches = 0
        self.decided = 0

    def rebind(self) -> None:
        """Forget submissions and a scheduled batch of an event loop that is gone (a new loop starts)."""
        self._pending, self._scheduled = [], False
        self._apply_membership()

    # -- membership -----------------------------------------------------------------------
    def join(self, owner: Any) -> None:
        """Give ``owner`` a fresh row before the next batch."""
        self._joins.append(owner)

    def leave(self, owner: Any) -> None:
        """Drop ``owner``'s row before the next batch."""
        if owner in self._joins:
            self._joins.remove(owner)
        else:
            self._leaves.add(id(owner))
        if not self._scheduled:  # keep the table small even when no lane is deciding
            self._schedule()

    def _apply_membership(self) -> None:
        if self._leaves:
            keep = [i for i, o in enumerate(self.rows) if id(o) not in self._leaves]
            self.rows = [self.rows[i] for i in keep]
            self.state = select_lanes(self.state, keep) if self.rows else None
            self._leaves.clear()
        if self._joins:
            parts = ([self.state] if self.state is not None else []) + [self._fresh] * len(self._joins)
            self.state = concat_states(parts)
            self.rows.extend(self._joins)
            self._joins.clear()
        for row, owner in enumerate(self.rows):
            owner.row = row

    # -- deciding -------------------------------------------------------------------------
    def submit(self, owner: Any, index: int, model: int, token: EngineToken) -> asyncio.Future:
        """Queue ``owner``'s token at generated position ``index`` from ``model``; await the future for the route."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(Submission(owner, index, model, token, future))
        if not self._scheduled:
            self._schedule()
        return future

    def _schedule(self) -> None:
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Decide every queued token in one batch (called by the event loop)."""
        self._scheduled = False
        batch = [s for s in self._pending if not s.future.done()]
        self._pending = []
        self._apply_membership()
        if not batch:
            return
        try:
            signals = self._signals(batch)
            step = self._step(batch, signals)
            routes, self.state = decide_checked(self.policy, self.state, step, len(self.rows), batch[0].index)
            host = np.asarray(to_numpy(routes), np.int64)
        except EadError as exc:
            for s in batch:
                s.future.set_exception(exc)
            return
        self.batches += 1
        self.decided += len(batch)
        for s, signal in zip(batch, signals.tolist(), strict=True):
            route = int(host[s.owner.row])
            if 0 <= route < self.num_models:
                s.future.set_result((route, signal))
            else:
                s.future.set_exception(
                    ModelCountError(
                        f"policy {self.policy.name!r} routed lane {s.owner.lane} to model {route}, "
                        f"not one of {self.num_models} models (position {s.index})"
                    )
                )

    def _signals(self, batch: list[Submission]) -> np.ndarray:
        """`Step.entropy` of each submission: the engine's exact entropy, or the top-k estimate."""
        if self.signal.exact:
            return np.fromiter((s.token.entropy for s in batch), np.float64, len(batch))
        top = self._top(batch, self.signal.k)[0]  # checked finite and <= 0 token by token (`check`)
        return np.asarray(topk_entropy_estimate(top, self.vocab_size, validate=False), np.float64)

    def check(self, token: EngineToken) -> str | None:
        """What the token lacks that the policy must be shown, or ``None`` when it is complete."""
        if self.signal.exact and (token.entropy is None or not math.isfinite(token.entropy)):
            return f"the engine gave entropy {token.entropy!r}; the policy needs the exact entropy"
        k = self._k
        if k:
            got, ids = token.top_logprobs, token.top_ids
            if got is None or ids is None or len(got) < k or len(ids) < k:
                return f"the engine returned {0 if got is None else len(got)} top log-probabilities; {k} were asked"
            if any(math.isnan(v) or v > 1e-6 for v in got[:k]):
                return "the engine returned top log-probabilities that are NaN or above 0"
        return None

    def _top(self, batch: list[Submission], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(len(batch), k)`` top-k log-probabilities and token ids of the (checked) submissions."""
        lp = np.array([s.token.top_logprobs[:k] for s in batch], np.float64).reshape(len(batch), k)
        ids = np.array([s.token.top_ids[:k] for s in batch], np.int64).reshape(len(batch), k)
        return lp, ids

    def _step(self, batch: list[Submission], signals: np.ndarray) -> Step:
        """The table-wide `Step`: the batch's rows live, every other row zeros."""
        n = len(self.rows)
        rows = np.fromiter((s.owner.row for s in batch), np.int64, len(batch))
        entropy, model, index = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64)
        token, live = np.zeros(n, np.int64), np.zeros(n, bool)
        entropy[rows], live[rows] = signals, True
        model[rows] = [s.model for s in batch]
        index[rows] = [s.index for s in batch]
        token[rows] = [s.token.token for s in batch]
        logprobs = token_ids = None
        if self.top_k:
            lp, ids = self._top(batch, self.top_k)
            logprobs, token_ids = np.zeros((n, self.top_k)), np.zeros((n, self.top_k), np.int64)
            logprobs[rows], token_ids[rows] = lp, ids
        return Step(
            entropy=entropy,
            model=model,
            index=index,
            live=live,
            logprobs=logprobs,
            token_ids=token_ids,
            token=token,
            vocab_size=self.vocab_size,
        )
