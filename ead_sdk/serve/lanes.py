"""One request's lanes on a hand-off router, as a stream of final pieces of text.

Each prompt of a request is one router lane. The router yields a token only once the policy has
decided on it (a retrying escalation may still replace a token until then), so every `Piece`
handed on here is final: the server never has to take text back. Stop strings are applied here
(`ead_sdk.serve.text`): the lane is cancelled on the router as soon as one appears.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ead_sdk.errors import UpstreamError
from ead_sdk.serve.schemas import GenerationSettings
from ead_sdk.serve.text import IncrementalText


@dataclass(frozen=True)
class Piece:
    """Lane ``index`` produced ``token`` (by model ``model``) and ``text`` became final.

    The last piece of a lane may carry text only (``token`` and ``model`` ``None``): what was held
    back while it could have been the start of a stop string.
    """

    index: int
    token: int | None
    model: int | None
    text: str


@dataclass
class LaneOutcome:
    """How one lane ended.

    Attributes:
        index: the prompt's index in the request.
        prompt: its token ids.
        tokens: the generated tokens handed on, and `models` the model that emitted each.
        text: the lane's text (cut before a stop string).
        finish_reason: ``"stop"``, ``"length"``, or ``"error"`` when an upstream failed.
        result: the router's `LaneResult` (its cost report and hand-off latencies), when the lane ran to its end.
        error: the upstream fault that ended the lane.
        seconds: the lane's wall time.
    """

    index: int
    prompt: tuple[int, ...]
    tokens: list[int] = field(default_factory=list)
    models: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    result: Any = None
    error: UpstreamError | None = None
    seconds: float = 0.0


class RequestLanes:
    """The lanes of one request, run concurrently on ``router``; iterate for `Piece`s.

    After iteration, `outcomes` holds one `LaneOutcome` per prompt. An upstream fault on any lane
    cancels the request's other lanes and is raised from the iteration (`UpstreamError`).
    """

    def __init__(self, router: Any, prompts: Sequence[tuple[int, ...]], settings: GenerationSettings, tokenizer: Any):
        self.router = router
        self.settings = settings
        self.tokenizer = tokenizer
        self.outcomes = [LaneOutcome(i, tuple(p)) for i, p in enumerate(prompts)]
        self._queue: asyncio.Queue[Piece | LaneOutcome] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aiter__(self) -> AsyncIterator[Piece]:
        if len(self.outcomes) == 1:  # the common case: no queue, no task hop per token
            async for piece in self._pieces(self.outcomes[0]):
                yield piece
            if self.outcomes[0].error is not None:
                raise self.outcomes[0].error
            return
        self._tasks = [asyncio.create_task(self._run(o)) for o in self.outcomes]
        try:
            running = len(self._tasks)
            while running:
                item = await self._queue.get()
                if isinstance(item, Piece):
                    yield item
                    continue
                running -= 1
                if item.error is not None:
                    raise item.error
        finally:
            await self.cancel()

    async def cancel(self) -> None:
        """Cancel every lane still running (the client left, or a sibling lane failed)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, out: LaneOutcome) -> None:
        """One lane of several: its pieces, then its outcome, go to the shared queue."""
        try:
            async for piece in self._pieces(out):
                await self._queue.put(piece)
        finally:
            await self._queue.put(out)

    async def _pieces(self, out: LaneOutcome) -> AsyncIterator[Piece]:
        """Run one lane on the router, yielding its final text piece by piece; ``out`` records how it ended."""
        started = time.perf_counter()
        s = self.settings
        lane = self.router.open_lane(list(out.prompt), max_new_tokens=s.max_tokens, sampling=s.sampling)
        text = IncrementalText(self.tokenizer, out.prompt, s.stop)
        try:
            async for event in lane:
                token, model = int(event.token), int(event.model)
                out.tokens.append(token)
                out.models.append(model)
                yield Piece(out.index, token, model, text.push(token))
                if text.stopped:
                    break
            tail = text.finish()
            if tail:
                yield Piece(out.index, None, None, tail)
            out.finish_reason = "stop" if text.stopped else None
            out.result = await _result(lane, text.stopped)
            out.finish_reason = out.finish_reason or getattr(out.result, "finish_reason", None) or "stop"
        except UpstreamError as exc:
            out.error, out.finish_reason = exc, "error"
        finally:
            out.text = text.text
            out.seconds = time.perf_counter() - started
            if text.stopped or out.error is not None or out.finish_reason is None:
                await lane.aclose()


async def _result(lane: Any, cut: bool) -> Any:
    """The lane's `LaneResult`; a lane cut by a stop string is cancelled first (its report covers what ran)."""
    if cut:
        await lane.aclose()
        return await lane.outcome()
    return await lane.result()
