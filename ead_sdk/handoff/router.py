"""`HandoffRouter`: a policy routes many concurrent lanes across serving engines, one streaming request at a time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from ead_sdk.backend import Sampling
from ead_sdk.cost import CostModel, sum_reports
from ead_sdk.decode import MAX_NEW_TOKENS
from ead_sdk.errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    CostModelError,
    DecodeStreamError,
    ReplayOnlyPolicyError,
    UpstreamError,
)
from ead_sdk.escalation import rule
from ead_sdk.handoff.decider import BatchDecider
from ead_sdk.handoff.lane import LaneOptions, LaneRun, LaneStream
from ead_sdk.handoff.results import HandoffLaneResult, HandoffResult
from ead_sdk.interface import Policy
from ead_sdk.serving import ServingEngine
from ead_sdk.signal_spec import SignalSpec, signal_of

_ROUTERS = itertools.count()


class HandoffRouter:
    """Route lanes token by token across serving engines: each lane streams from its current model's engine.

    The policy sees each streamed token's signal, batched over the lanes that produced one (one
    state table for every lane). When a lane's route changes, its request is cancelled at that
    token and the lane continues on the other engine with a new request whose prompt is the
    lane's token ids so far; the escalation modes mean what they mean in `ead_sdk.generate`.

    Args:
        engines: one `ead_sdk.serving.ServingEngine` per model, smallest first.
        policy: a `Policy`, or a spec (dict, JSON text or file) for `ead_sdk.load_policy`.
        cost_model: per-model forward costs (default: the engines' parameter counts).
        max_lanes: the most lanes routed at once; further lanes wait for a free slot.
        logprobs: top-k log-probabilities shown to the policy in `Step.logprobs` (``None``:
            none beyond what a top-k signal reads).
        timeout: the longest wait in seconds for an engine's next token before the lane fails
            with `UpstreamError` (``None``: wait forever).
        close_timeout: the longest wait for an engine to close a cancelled request.

    Raises:
        ModelCountError: the policy cannot route over this many engines.
        SignalUnavailableError: an engine cannot give the signal the policy was calibrated on.
        CostModelError: an engine lacks its parameter count and no cost model is given.
    """

    def __init__(
        self,
        engines: Sequence[ServingEngine],
        policy: Policy | Any,
        cost_model: CostModel | None = None,
        max_lanes: int = 256,
        *,
        logprobs: int | None = None,
        timeout: float | None = 120.0,
        close_timeout: float = 10.0,
    ):
        self.engines = _engines(engines)
        self.policy = _policy(policy)
        self.policy.check_models(len(self.engines))
        self.signal = signal_of(self.policy)
        self.top_k = _top_k(self.engines, self.signal, logprobs)
        self.cost_model = _cost_model(self.engines, cost_model)
        if isinstance(max_lanes, bool) or not isinstance(max_lanes, int) or max_lanes < 1:
            raise ArgumentError(f"max_lanes must be an integer >= 1, got {max_lanes!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ArgumentError(f"timeout must be None or a number of seconds > 0, got {timeout!r}")
        self.max_lanes, self.timeout, self.close_timeout = max_lanes, timeout, close_timeout
        self.vocab_size = min(int(e.vocab_size) for e in self.engines)
        self.tokenizer = next((e.tokenizer for e in self.engines if e.tokenizer is not None), None)
        self.rule = rule(self.policy.escalation)
        self.decider = BatchDecider(self.policy, len(self.engines), self.signal, self.top_k, self.vocab_size)
        self.name = f"ead{next(_ROUTERS)}"
        self._lanes = itertools.count()
        self._open: dict[int, LaneStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._watchdog: asyncio.Task | None = None
        self.clock = time.monotonic
        self._closed = False

    # -- lanes ----------------------------------------------------------------------------
    def open_lane(
        self,
        prompt_ids: Sequence[int] | str,
        max_new_tokens: int = 64,
        sampling: Sampling | None = None,
        stop: Sequence[str | int] = (),
    ) -> LaneStream:
        """Start routing one lane now (inside a running event loop); iterate the `LaneStream` for its tokens.

        Args:
            prompt_ids: the prompt's token ids (a string needs an engine with a tokenizer).
            max_new_tokens: the most tokens the lane generates.
            sampling: how each engine draws tokens (greedy by default).
            stop: stop strings (through the engines' tokenizer) and stop token ids.
        """
        if self._closed:
            raise DecodeStreamError("this HandoffRouter is closed: open lanes on a new one")
        options = self._options(prompt_ids, max_new_tokens, sampling, stop)
        self._bind_loop()
        run = LaneRun(self, next(self._lanes), options)
        task = asyncio.get_running_loop().create_task(run.run(), name=f"{self.name}-lane-{run.lane}")
        lane = LaneStream(run, task)
        self._open[run.lane] = lane
        task.add_done_callback(lambda _t, i=run.lane: self._open.pop(i, None))
        if self.timeout is not None and (self._watchdog is None or self._watchdog.done()):
            self._watchdog = task.get_loop().create_task(self._watch(), name=f"{self.name}-watchdog")
        return lane

    def _bind_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise DecodeStreamError(
                "open_lane starts a lane at once and needs a running event loop: call it from async code "
                "(or use generate_sync from synchronous code)"
            ) from None
        if self._loop is not loop:
            if self._open:
                raise DecodeStreamError("this HandoffRouter has lanes open in another event loop")
            self._loop, self._slots, self._watchdog = loop, asyncio.Semaphore(self.max_lanes), None
            self.decider.rebind()
            self.clock = loop.time

    async def _watch(self) -> None:
        """End the wait of any lane that has waited longer than ``timeout`` for its engine's next token."""
        period = min(self.timeout / 4, 1.0)  # type: ignore[operator]
        while self._open:
            await asyncio.sleep(period)
            now = self.clock()
            for lane in list(self._open.values()):
                since = lane.run.waiting_since
                if since is not None and now - since > self.timeout:  # type: ignore[operator]
                    lane.run.expire(lane.task)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_lanes`` slots while a lane runs."""
        async with self._slots:  # type: ignore[union-attr]
            yield

    def _options(self, prompt: Any, max_new_tokens: Any, sampling: Any, stop: Any) -> LaneOptions:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
            raise ArgumentTypeError(f"max_new_tokens must be an integer, got {type(max_new_tokens).__name__}")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ArgumentError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}], got {max_new_tokens}")
        sampling = Sampling() if sampling is None else sampling
        if not isinstance(sampling, Sampling):
            raise ArgumentTypeError(f"sampling must be an ead_sdk.Sampling, got {type(sampling).__name__}")
        ids, strings = _stops(stop)
        if strings and self.tokenizer is None:
            raise BackendError("stop strings need a tokenizer, and no engine has one: give stop token ids instead")
        return LaneOptions(self._prompt(prompt), int(max_new_tokens), sampling, ids, strings)

    def _prompt(self, prompt: Any) -> tuple[int, ...]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise BackendError("a text prompt needs a tokenizer, and no engine has one: give token ids")
            prompt = self.tokenizer(prompt)["input_ids"]
        if isinstance(prompt, bytes) or not hasattr(prompt, "__iter__"):
            raise ArgumentTypeError(f"prompt_ids must be a list of token ids, got {type(prompt).__name__}")
        values = list(prompt.tolist() if hasattr(prompt, "tolist") else prompt)
        if not values:
            raise ArgumentError("the prompt is empty: a prompt needs at least one token")
        for j, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ArgumentTypeError(f"prompt position {j}: token ids must be integers, got {v!r:.40}")
            if not 0 <= v < self.vocab_size:
                raise ArgumentError(
                    f"prompt position {j}: token id {v} is outside the vocabulary [0, {self.vocab_size})"
                )
        return tuple(int(v) for v in values)

    async def close_stream(self, stream: Any) -> None:
        """Close an engine stream (the engine cancels its request), waiting at most ``close_timeout``."""
        aclose = getattr(stream, "aclose", None)
        if aclose is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout):
                await aclose()

    # -- batches --------------------------------------------------------------------------
    async def generate(
        self,
        prompts: Sequence[Sequence[int] | str],
        max_new_tokens: int = 64,
        sampling: Sampling | None = None,
        stop: Sequence[str | int] = (),
    ) -> HandoffResult:
        """Route every prompt as a lane, concurrently; a `GenerateResult`-shaped `HandoffResult`.

        A lane whose engine fails ends with ``finish_reason="error"`` and its `UpstreamError`
        (``result.errors``); the other lanes finish. Any other error (a policy bug) is raised.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ArgumentError("prompts must be a non-empty list of prompts (token-id lists or strings)")
        lanes = [self.open_lane(p, max_new_tokens, sampling, stop) for p in prompts]
        try:
            results = [await lane.outcome() for lane in lanes]
        finally:
            for lane in lanes:
                await lane.aclose()
        for res in results:
            if res.error is not None and not isinstance(res.error, UpstreamError):
                raise res.error
        return self._batch(results)

    def _batch(self, results: list[HandoffLaneResult]) -> HandoffResult:
        return HandoffResult(
            lanes=tuple(results),
            report=sum_reports([r.report for r in results], self.cost_model),
            cost_model=self.cost_model,
        )

    def generate_sync(
        self,
        prompts: Sequence[Sequence[int] | str],
        max_new_tokens: int = 64,
        sampling: Sampling | None = None,
        stop: Sequence[str | int] = (),
    ) -> HandoffResult:
        """`generate` from synchronous code (``asyncio.run``)."""
        out: list[HandoffResult] = []

        async def run() -> None:  # returns nothing: Python 3.11's asyncio.run may repr the main task's result
            out.append(await self.generate(prompts, max_new_tokens, sampling, stop))

        asyncio.run(run())
        return out[0]

    async def aclose(self) -> None:
        """Cancel every open lane and refuse new ones (the engines stay open: their owner closes them)."""
        self._closed = True
        for lane in list(self._open.values()):
            await lane.aclose()

    async def __aenter__(self) -> HandoffRouter:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @property
    def open_lanes(self) -> int:
        """Lanes running or waiting for a slot now."""
        return len(self._open)


# -- construction checks ------------------------------------------------------------------
def _engines(engines: Sequence[ServingEngine]) -> tuple[ServingEngine, ...]:
    if isinstance(engines, ServingEngine) or not isinstance(engines, Sequence) or not engines:
        raise ArgumentTypeError("engines must be a non-empty list of ServingEngines, smallest model first")
    for i, e in enumerate(engines):
        if not isinstance(e, ServingEngine):
            raise ArgumentTypeError(f"engines[{i}] is a {type(e).__name__}, not an ead_sdk.serving.ServingEngine")
    return tuple(engines)


def _policy(policy: Any) -> Policy:
    if not isinstance(policy, Policy):
        from ead_sdk.specs import load_policy

        policy = load_policy(policy)
    if getattr(policy, "replay_only", False):
        raise ReplayOnlyPolicyError(
            f"policy {policy.name!r} reads replay-only look-ahead (Step.future) and cannot route live"
        )
    return policy


def _top_k(engines: tuple[ServingEngine, ...], signal: SignalSpec, logprobs: int | None) -> int:
    """Check the signal on every engine; the top-k each request asks for."""
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 1):
        raise ArgumentError(f"logprobs must be None or an integer >= 1, got {logprobs!r}")
    k = max(logprobs or 0, signal.k or 0)
    for i, e in enumerate(engines):
        got = e.signals()
        signal.require(exact=got.exact, max_k=got.max_k, where=f"engine {i} ({e.name!r})")
        if k > got.max_k:
            raise BackendError(f"logprobs={k} asked, but engine {i} ({e.name!r}) returns top-{got.max_k} at most")
    return k


def _cost_model(engines: tuple[ServingEngine, ...], cost_model: CostModel | None) -> CostModel:
    if cost_model is not None:
        cost_model.check_models(len(engines), "the router")
        return cost_model
    missing = [e.name for e in engines if not e.num_params]
    if missing:
        raise CostModelError(f"engines {missing} do not know their parameter count: pass cost_model=CostModel(...)")
    return CostModel.from_param_counts([int(e.num_params) for e in engines], [e.name for e in engines])  # type: ignore[arg-type]


def _stops(stop: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if isinstance(stop, (str, int)):
        stop = (stop,)
    ids: list[int] = []
    strings: list[str] = []
    for s in stop:
        if isinstance(s, str) and s:
            strings.append(s)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0:
            ids.append(int(s))
        else:
            raise ArgumentError(f"stop entries must be non-empty strings or token ids >= 0, got {s!r}")
    return tuple(ids), tuple(strings)
