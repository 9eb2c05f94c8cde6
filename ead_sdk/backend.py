"""The backend contract: what the decode loop asks of whatever computes next-token distributions.

The loop in `ead_sdk.decode` never knows what is behind a backend (a pair of transformers models,
a recorded trace, a remote server): it asks one model at a time to compute the next position for
some lanes, shows the policy what came back, and tells the backend which tokens were emitted.
"Swap the transport, keep the client."
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ead_sdk.arrays import Array
from ead_sdk.errors import BackendError

LogprobRequest = int | Literal["full"] | None
"""What a policy needs besides entropy: ``k`` (top-k), ``"full"`` (every logprob) or ``None``."""


@dataclass(frozen=True)
class Sampling:
    """How a backend draws a token from a distribution (transformers' logits warpers).

    Greedy (``do_sample=False``) is the default. With sampling, warpers apply in the order
    temperature, top-p, min-p, top-H; entropies shown to policies are always those of the
    model's raw distribution, before any warper.

    Attributes:
        do_sample: draw at random instead of taking the most likely token.
        temperature: divides the logits (``> 0``).
        top_p: keep the smallest set of tokens with this much probability mass.
        min_p: drop tokens less likely than ``min_p`` times the most likely one.
        top_h: keep tokens within an entropy budget (transformers' ``TopHLogitsWarper``).
        seed: seeds the backend's random generator (one stream per run).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    min_p: float | None = None
    top_h: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise BackendError(f"sampling: temperature must be finite and > 0, got {self.temperature!r}")
        for name in ("top_p", "min_p", "top_h"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise BackendError(f"sampling: {name} must be in (0, 1], got {value!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise BackendError(f"sampling: seed must be None or an integer in [0, 2**63), got {seed!r:.40}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able settings (for trace metadata)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class DecodeRequest:
    """A batch of lanes to decode, as the loop hands it to `Backend.start`.

    Attributes:
        prompts: per lane, the prompt's token ids (never empty).
        max_new_tokens: the most tokens any lane generates.
        sampling: how tokens are drawn.
        logprobs: what `Draw.logprobs` must hold (see `LogprobRequest`).
        stop: stop strings and stop token ids, besides the backend's own end-of-sequence.
        keep_rows: keep each computed distribution until the step ends, for `BatchSession.record_rows`.
    """

    prompts: tuple[tuple[int, ...], ...]
    max_new_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: LogprobRequest = None
    stop: tuple[str | int, ...] = ()
    keep_rows: bool = False

    @property
    def n(self) -> int:
        """Number of lanes."""
        return len(self.prompts)


@dataclass(frozen=True)
class Draw:
    """One model's forward for some lanes: its distribution's signals and the token drawn.

    Arrays are of the backend's namespace and device, one row per requested lane.

    Attributes:
        entropy: ``(k,)`` entropy in nats of the raw distribution (before sampling warpers).
        token: ``(k,)`` int64 token drawn (by the backend's sampler, or a trace's trajectory).
        logprobs: ``(k, K)`` log-probabilities sorted descending, when requested.
        token_ids: ``(k, K)`` their token ids for a top-k request; ``None`` for ``"full"``.
    """

    entropy: Array
    token: Array
    logprobs: Array | None = None
    token_ids: Array | None = None


@dataclass(frozen=True)
class RowRecord:
    """What a trace stores about one model's distribution at one position, for some lanes.

    Host numpy arrays, one row per lane: ``entropy`` and ``token_logprob`` ``(k,)``,
    ``top_ids``/``top_logprobs`` ``(k, K)`` (``None`` when no top-k is recorded).
    """

    entropy: np.ndarray
    token_logprob: np.ndarray
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None


class BatchSession(ABC):
    """One batch a backend is decoding: it owns the batch's state (caches, buffers) until `close`.

    For each generated position ``t`` the loop calls `forward` (once per model that lanes are
    routed to, and once per retry), then `append` with the emitted tokens and `finished` for the
    lanes still going. Positions are counted among generated tokens; a model asked for position
    ``t`` of a lane first consumes every token of that lane it has not seen (its catch-up).
    A session is a context manager: leaving the ``with`` block closes it.
    """

    @abstractmethod
    def forward(self, model: int, lanes: np.ndarray, position: int) -> Draw:
        """Model ``model`` computes generated position ``position`` for ``lanes`` (host int64).

        The model first catches up, in one pass, on any of those lanes' tokens it missed.
        Returns one row per lane, in the order of ``lanes``.
        """

    @abstractmethod
    def append(self, position: int, tokens: Array, lanes: np.ndarray) -> None:
        """Record the tokens emitted at ``position`` for ``lanes`` (``tokens`` is ``(n,)``)."""

    def finished(self, position: int, lanes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Which of ``lanes`` end with their token at ``position`` (host bool, one per lane).

        Covers the backend's own ends: end-of-sequence ids, stop strings, a trajectory's end.
        The loop applies the token limit itself.
        """
        return np.zeros(len(lanes), bool)

    def record_rows(self, model: int, lanes: np.ndarray, tokens: np.ndarray, k: int) -> RowRecord:
        """What a trace stores about the distribution ``model`` computed for ``lanes`` this step.

        ``tokens`` are the emitted ones (host). Only needed when recording (the request had
        ``keep_rows``).
        """
        raise BackendError(f"{type(self).__name__} cannot record traces")

    def score(self, model: int, lanes: np.ndarray, generated: Sequence[np.ndarray], k: int) -> list[RowRecord]:
        """Teacher-forced signals of ``model`` along each lane's whole trajectory ``generated``.

        One `RowRecord` per lane with one row per generated position.
        """
        raise BackendError(f"{type(self).__name__} cannot score trajectories")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the batch's state (caches, buffers)."""

    def __enter__(self) -> BatchSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """Describes a ladder of models, smallest first, and starts batch sessions on them.

    The backend itself holds no batch: `start` hands out a `BatchSession` that owns one batch's
    state, so a backend can serve several batches and never has a half-finished one.
    """

    # -- description ----------------------------------------------------------------------
    @property
    @abstractmethod
    def num_models(self) -> int:
        """``M``, the number of models."""

    @property
    @abstractmethod
    def model_names(self) -> tuple[str, ...]:
        """A name per model, smallest first."""

    @property
    @abstractmethod
    def param_counts(self) -> tuple[int, ...]:
        """Each model's parameter count (the default cost model)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The shared vocabulary size: every token id is below it."""

    @property
    @abstractmethod
    def xp(self) -> Any:
        """The array namespace of the arrays this backend returns (and policies run on)."""

    @property
    def device(self) -> Any:
        """The device those arrays live on (``None``: the namespace's default)."""
        return None

    @property
    def tokenizer_fingerprint(self) -> str:
        """Identifies the shared tokenizer (recorded in traces); empty when unknown."""
        return ""

    @property
    def max_logprobs(self) -> int:
        """The most top-k log-probabilities a `Draw` can carry (a policy's top-k signal needs its k)."""
        return self.vocab_size

    # -- text -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of a text prompt; only backends with a tokenizer can."""
        raise BackendError(f"{type(self).__name__} has no tokenizer: give prompts as token-id lists")

    def decode(self, token_ids: Sequence[int]) -> str | None:
        """The text of some token ids, or ``None`` without a tokenizer."""
        return None

    def default_prompts(self) -> list[list[int]] | None:
        """Prompts to use when none are given (a trace's own); ``None``: prompts are required."""
        return None

    def default_max_new_tokens(self) -> int:
        """The token limit when none is given."""
        return 256

    def lane_limits(self, request: DecodeRequest) -> np.ndarray | None:
        """Per-lane token limits the backend imposes (a trace's lengths), or ``None``.

        A lane with limit 0 produces nothing; one that reaches its limit ends as ``"stop"``.
        """
        return None

    # -- one batch ------------------------------------------------------------------------
    @abstractmethod
    def start(self, request: DecodeRequest) -> BatchSession:
        """Begin a batch of ``request.n`` fresh lanes; the session owns its state until closed."""
