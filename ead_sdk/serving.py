"""The serving-engine contract: what the lane hand-off router needs from vLLM, an HTTP server, llama.cpp.

A serving engine is not stepped token by token like a `ead_sdk.backend.Backend`: it runs ordinary
streaming requests. The router (`ead_sdk.handoff`) runs each lane as one request on the engine of
the lane's current model, shows the policy each streamed token's signal, and on a switch closes
that stream (the engine cancels the request) and continues the lane on another engine with a new
request whose prompt is the lane's token ids so far. Adapters live in `ead_sdk.backends`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ead_sdk.backend import Sampling


@dataclass(frozen=True)
class EngineSignals:
    """What an engine can tell about each streamed token's distribution.

    Attributes:
        exact: it gives the exact entropy of the full distribution (`EngineToken.entropy`).
        max_k: the most top-k log-probabilities it returns per token (0: none).
    """

    exact: bool
    max_k: int


@dataclass(frozen=True)
class EngineRequest:
    """One streaming request: continue ``prompt`` (token ids, never text) by up to ``max_tokens``.

    Attributes:
        prompt: the token ids to continue: the lane's prompt and every token emitted so far.
        max_tokens: the most tokens this request may produce.
        sampling: how tokens are drawn; greedy by default.
        stop_token_ids: token ids that end the lane besides the model's end-of-sequence.
        top_k: top-k log-probabilities wanted with each token (0: none).
        request_id: a unique id, for the engine's own bookkeeping and its logs.
    """

    prompt: tuple[int, ...]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop_token_ids: tuple[int, ...] = ()
    top_k: int = 0
    request_id: str = ""


@dataclass(frozen=True)
class EngineToken:
    """One streamed token and what the engine says of the distribution it was drawn from.

    Attributes:
        token: the token id.
        entropy: exact entropy in nats of the raw distribution, when the engine gives it.
        top_ids: ids of the top-k tokens, most likely first (``None`` when not asked for).
        top_logprobs: their log-probabilities, normalised over the full vocabulary.
        logprob: the drawn token's log-probability, when known.
        finish_reason: ``"stop"`` or ``"length"`` when the engine ended the request at this token.
    """

    token: int
    entropy: float | None = None
    top_ids: tuple[int, ...] | None = None
    top_logprobs: tuple[float, ...] | None = None
    logprob: float | None = None
    finish_reason: str | None = None


class ServingEngine(ABC):
    """One model served by an engine, reached through streaming requests.

    Attributes:
        name: a label for messages, metrics and reports (e.g. ``"small"``).
        num_params: the model's parameter count (the default cost model), when known.
        vocab_size: the size of the model's vocabulary.
    """

    name: str
    num_params: int | None
    vocab_size: int

    @abstractmethod
    def signals(self) -> EngineSignals:
        """What the engine gives about each token's distribution (checked against a spec's signal)."""

    @abstractmethod
    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        """Run ``request``, yielding its tokens as the engine produces them.

        Closing the iterator early (``aclose()``) cancels the request on the engine. A failure of
        the engine (a broken connection, a malformed reply, a timeout) raises
        `ead_sdk.errors.UpstreamError` from the iterator.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the engine holds (connections, an in-process engine)."""

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (for stop strings and text), or ``None``."""
        return None
