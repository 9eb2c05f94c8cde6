"""One lane's life in the hand-off router: its requests, the escalation rule, its tokens and costs.

A lane runs one streaming request at a time on the engine of its current model. Each token of a
deciding request is shown to the policy (through the router's batched decider) before it is
handed on; the escalation rule (`ead_sdk.escalation`) then says who emits it:

- the route stays: the token is emitted and the stream goes on;
- the route changes without a retry: the token is emitted, the stream is closed (the engine
  cancels the request) and a new request on the routed model continues from the next position;
- a retrying escalation (``retry``/``retry_token``, route above the model): the token is thrown
  away, the stream closed, and a new request on the larger model recomputes the position; that
  token is emitted without being shown to the policy. Under ``retry_token`` the request asks for
  that one token, and the lane then returns to the model that escalated.

A new request's prompt is always the lane's prompt and token ids so far, never text.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ead_sdk.backend import Sampling
from ead_sdk.decode import TokenEvent
from ead_sdk.errors import EadError, UpstreamError
from ead_sdk.handoff.ledger import LaneLedger
from ead_sdk.handoff.results import DecisionLog, Handoff, HandoffLaneResult
from ead_sdk.serving import EngineRequest, EngineToken


@dataclass
class LaneOptions:
    """A lane's checked settings."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    sampling: Sampling
    stop_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]


@dataclass
class _Plan:
    """The lane's next request: on ``model``; ``retry_of``: the model whose thrown-away token it recomputes first."""

    model: int
    retry_of: int | None = None


class LaneRun:
    """The state machine of one lane, driven by `run` in its own task (see the module docstring).

    Args:
        router: the `ead_sdk.handoff.HandoffRouter` it belongs to (engines, rule, decider, options).
        lane: its number.
        options: its prompt and settings.
    """

    def __init__(self, router: Any, lane: int, options: LaneOptions):
        self.router, self.lane, self.options = router, lane, options
        self.row = -1
        self.tokens: list[int] = []
        self.models: list[int] = []
        self.finish: str | None = None
        self.error: BaseException | None = None
        self.events: asyncio.Queue = asyncio.Queue()
        self.ledger = LaneLedger(len(router.engines), len(options.prompt))
        self.handoffs: list[Handoff] = []
        self.log: list[tuple[int, int, float, int, int]] = []
        self.top: list[tuple[tuple[float, ...], tuple[int, ...]]] = []
        self.requests = 0
        self.closing = False
        self.pending: dict[str, Any] | None = None
        self.waiting_since: float | None = None
        self.expired = False
        self._stop_tail = 2 * max((len(s) for s in options.stop_strings), default=0) + 2

    # -- the task -------------------------------------------------------------------------
    async def run(self) -> HandoffLaneResult:
        """Run the lane to its end; always returns its result (an error or a cancel is recorded in it)."""
        try:
            async with self.router.slot():
                self.router.decider.join(self)
                try:
                    plan: _Plan | None = _Plan(self.router.policy.initial_model)
                    while self.finish is None and plan is not None:
                        plan = await self._request(plan)
                finally:
                    self.router.decider.leave(self)
            self.finish = self.finish or "stop"
        except asyncio.CancelledError:
            if not self.closing:
                raise
            self.finish = "cancelled"
        except Exception as exc:  # noqa: BLE001 - the lane's error, raised to its consumer and by result()
            self.error, self.finish = exc, "error"
        finally:
            if self.error is not None:
                self.events.put_nowait(self.error)
            self.events.put_nowait(_END)
        return self._result()

    # -- one request ----------------------------------------------------------------------
    def _request_for(self, plan: _Plan) -> EngineRequest:
        t = len(self.tokens)
        retried = plan.retry_of is not None
        one = retried and self.router.rule.next_model(plan.model, plan.retry_of) != plan.model
        sampling = self.options.sampling
        if sampling.do_sample and sampling.seed is not None:
            sampling = replace(sampling, seed=_request_seed(sampling.seed, self.options.prompt, t))
        self.requests += 1
        return EngineRequest(
            prompt=self.options.prompt + tuple(self.tokens),
            max_tokens=1 if one else self.options.max_new_tokens - t,
            sampling=sampling,
            stop_token_ids=self.options.stop_ids,
            top_k=self.router.top_k,
            request_id=f"{self.router.name}-{self.lane}-{self.requests}",
        )

    async def _request(self, plan: _Plan) -> _Plan | None:
        """Run ``plan``'s request until the lane ends or hands off; the next plan (``None``: the engine ended)."""
        engine = self.router.engines[plan.model]
        request = self._request_for(plan)
        stream = self._open(engine, request)
        try:
            received = 0
            while True:
                tok = await self._next(stream, engine, plan)
                if tok is None:
                    return None
                received += 1
                if self.pending is not None:
                    self._handoff_done(time.perf_counter())
                nxt = await self._take(tok, plan, received, request)
                if nxt is not plan or self.finish is not None:
                    return nxt
        finally:
            await self.router.close_stream(stream)

    def _open(self, engine: Any, request: EngineRequest) -> AsyncIterator[EngineToken]:
        try:
            return engine.stream(request)
        except UpstreamError as exc:
            raise self._upstream(exc, engine) from exc
        except EadError:
            raise
        except Exception as exc:
            raise UpstreamError(
                f"engine {engine.name!r} refused lane {self.lane}'s request: {type(exc).__name__}: {exc}",
                engine=engine.name,
                lane=self.lane,
            ) from exc

    async def _next(self, stream: AsyncIterator[EngineToken], engine: Any, plan: _Plan) -> EngineToken | None:
        """The stream's next token (``None`` at its end); a failure or silence is this lane's `UpstreamError`.

        The router's watchdog cancels a wait longer than its ``timeout`` (`expire`): cheaper per
        token than arming a timer around every read.
        """
        self.waiting_since = self.router.clock()
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError as exc:
            if not self.expired:
                raise
            self.expired = False
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise UpstreamError(
                f"engine {engine.name!r} sent no token for {self.router.timeout} s "
                f"(lane {self.lane}, position {len(self.tokens)})",
                engine=engine.name,
                lane=self.lane,
            ) from exc
        except UpstreamError as exc:
            raise self._upstream(exc, engine) from exc
        except EadError:
            raise
        except Exception as exc:
            raise UpstreamError(
                f"engine {engine.name!r} failed on lane {self.lane} at position {len(self.tokens)}: "
                f"{type(exc).__name__}: {exc}",
                engine=engine.name,
                lane=self.lane,
            ) from exc
        finally:
            self.waiting_since = None

    def expire(self, task: asyncio.Task) -> None:
        """The watchdog found this lane waiting too long for a token: end that wait (``task`` runs the lane)."""
        if self.waiting_since is not None and not self.expired:
            self.expired = True
            task.cancel()

    def _upstream(self, exc: UpstreamError, engine: Any) -> UpstreamError:
        text = str(exc)
        where = f"lane {self.lane}, position {len(self.tokens)}"
        return UpstreamError(
            text if f"lane {self.lane}" in text else f"{text} ({where})", engine=engine.name, lane=self.lane
        )

    # -- one token ------------------------------------------------------------------------
    async def _take(self, tok: EngineToken, plan: _Plan, received: int, request: EngineRequest) -> _Plan | None:
        """Handle one token of ``plan``'s request; ``plan`` itself to read on, or the next plan."""
        t, m, rule = len(self.tokens), plan.model, self.router.rule
        if tok.token < 0 or tok.token >= self.router.vocab_size:
            raise UpstreamError(
                f"engine {self.router.engines[m].name!r} sent token id {tok.token} outside the vocabulary "
                f"(lane {self.lane}, position {t})",
                lane=self.lane,
            )
        if plan.retry_of is not None and received == 1:  # the recomputed position: emitted undecided
            self.ledger.compute(m, t)
            self._emit(tok, m, received, request)
            back = int(rule.next_model(m, plan.retry_of))
            if self.finish is None and back != m:
                return self._switch(m, back, "return")
            plan.retry_of = None
            return plan
        problem = self.router.decider.check(tok)
        if problem is not None:
            raise UpstreamError(
                f"engine {self.router.engines[m].name!r}, lane {self.lane}, position {t}: {problem}",
                engine=self.router.engines[m].name,
                lane=self.lane,
            )
        self.ledger.compute(m, t)
        route, signal = await self.router.decider.submit(self, t, m, tok)
        self._log(t, m, signal, tok, route)
        if rule.retried(route, m):
            self.ledger.waste(m)
            return self._switch(m, route, "retry", retry_of=m)
        self._emit(tok, m, received, request)
        nxt = int(rule.next_model(route, m))
        if self.finish is None and nxt != m:
            return self._switch(m, nxt, "switch")
        return plan

    def _log(self, t: int, m: int, signal: float, tok: EngineToken, route: int) -> None:
        self.log.append((t, m, signal, tok.token, route))
        if self.router.top_k:
            k = self.router.top_k
            self.top.append((tuple(tok.top_logprobs[:k]), tuple(tok.top_ids[:k])))  # type: ignore[index]

    def _emit(self, tok: EngineToken, model: int, received: int, request: EngineRequest) -> None:
        """Append a final token, hand it on, and check the lane's stop conditions."""
        index = len(self.tokens)
        self.tokens.append(tok.token)
        self.models.append(model)
        self.ledger.emit(model)
        self.events.put_nowait(TokenEvent(self.lane, tok.token, model, index))
        self.finish = self._finished(tok, received, request)

    def _finished(self, tok: EngineToken, received: int, request: EngineRequest) -> str | None:
        if tok.finish_reason == "stop" or tok.token in self.options.stop_ids or self._stop_string():
            return "stop"
        if len(self.tokens) >= self.options.max_new_tokens:
            return "length"
        if tok.finish_reason == "length":
            return None if received >= request.max_tokens else "length"  # else: the engine's own limit
        if tok.finish_reason is not None:
            raise UpstreamError(
                f"engine ended lane {self.lane}'s request with finish_reason {tok.finish_reason!r}", lane=self.lane
            )
        return None

    def _stop_string(self) -> bool:
        if not self.options.stop_strings:
            return False
        text = self.router.tokenizer.decode(self.tokens[-self._stop_tail :])
        return any(s in text for s in self.options.stop_strings)

    # -- hand-offs ------------------------------------------------------------------------
    def _switch(self, from_model: int, to_model: int, reason: str, retry_of: int | None = None) -> _Plan:
        t = len(self.tokens)
        behind = t - self.ledger.consumed[to_model]
        self.pending = {
            "position": t,
            "from_model": from_model,
            "to_model": to_model,
            "reason": reason,
            "prompt_tokens": len(self.options.prompt) + t,
            "catchup": behind,
            "start": time.perf_counter(),
        }
        return _Plan(to_model, retry_of=retry_of)

    def _handoff_done(self, now: float | None) -> None:
        """The pending hand-off got its first token at ``now`` (``None``: it never did)."""
        pending, self.pending = self.pending, None
        start = pending.pop("start")  # type: ignore[union-attr]
        latency = None if now is None else now - start
        self.handoffs.append(Handoff(**pending, latency_s=latency))  # type: ignore[arg-type]

    # -- the result -----------------------------------------------------------------------
    def decisions(self) -> DecisionLog:
        """What the policy saw, as a `DecisionLog`."""
        rows = np.array(self.log, np.float64).reshape(len(self.log), 5)
        k = self.router.top_k
        return DecisionLog(
            index=rows[:, 0].astype(np.int64),
            model=rows[:, 1].astype(np.int64),
            signal=rows[:, 2],
            token=rows[:, 3].astype(np.int64),
            route=rows[:, 4].astype(np.int64),
            logprobs=np.array([lp for lp, _ in self.top], np.float64).reshape(-1, k) if k else None,
            token_ids=np.array([ids for _, ids in self.top], np.int64).reshape(-1, k) if k else None,
            vocab_size=self.router.vocab_size,
        )

    def _result(self) -> HandoffLaneResult:
        if self.pending is not None:
            self._handoff_done(None)
        tokenizer = self.router.tokenizer
        return HandoffLaneResult(
            prompt=self.options.prompt,
            tokens=tuple(self.tokens),
            models=tuple(self.models),
            report=self.ledger.report(self.router.cost_model),
            finish_reason=self.finish or "error",
            text=None if tokenizer is None else tokenizer.decode(self.tokens, skip_special_tokens=True),
            lane=self.lane,
            handoffs=tuple(self.handoffs),
            decisions=self.decisions(),
            error=self.error,
        )


def _request_seed(seed: int, prompt: tuple[int, ...], position: int) -> int:
    """The seed of a lane's request starting at ``position`` (same seed, prompt and routes: same tokens)."""
    text = f"{seed}|{position}|{','.join(map(str, prompt))}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


_END = object()
"""Marks the end of a lane's events."""


class LaneStream:
    """A lane being routed: iterate (``async for``) for its final tokens, then await `result`.

    Only final tokens are yielded, as `ead_sdk.decode.TokenEvent`s: a token a retrying escalation
    may replace is handed on only after the policy decided on it. An engine failure raises the
    lane's `ead_sdk.errors.UpstreamError` from the iteration (and from `result`).
    """

    def __init__(self, run: LaneRun, task: asyncio.Task):
        self._run, self._task = run, task
        self.lane, self.prompt = run.lane, run.options.prompt

    @property
    def run(self) -> LaneRun:
        """The lane's state machine (its tokens, costs and decisions so far)."""
        return self._run

    @property
    def task(self) -> asyncio.Task:
        """The task that runs the lane."""
        return self._task

    def __aiter__(self) -> LaneStream:
        return self

    async def __anext__(self) -> TokenEvent:
        item = await self._run.events.get()
        if item is _END:
            self._run.events.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def result(self) -> HandoffLaneResult:
        """The lane's `HandoffLaneResult` once it ends; raises its error if it failed."""
        res = await asyncio.shield(self._task)
        if res.error is not None:
            raise res.error
        return res

    async def outcome(self) -> HandoffLaneResult:
        """The lane's result once it ends, even when it failed (``finish_reason="error"``, ``error`` set)."""
        return await asyncio.shield(self._task)

    @property
    def done(self) -> bool:
        """Whether the lane has ended."""
        return self._task.done()

    async def aclose(self) -> None:
        """Cancel the lane (e.g. its client went away): its engine request is cancelled; it ends ``"cancelled"``."""
        if not self._task.done():
            self._run.closing = True
            self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise
