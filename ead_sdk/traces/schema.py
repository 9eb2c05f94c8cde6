"""The trace record: in-memory types and their Arrow schema (format version 1).

One row per generated sequence, so nothing that reads a row ever straddles two sequences.
Per-position, per-model values are stored as ``list<fixed_size_list<float32, M>>``: the values
buffer of a whole batch is one contiguous ``(total_tokens, M)`` array, which replay reads
without copying. The layout is specified in ``docs/trace-format.md``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from ead_sdk import strict_json
from ead_sdk.cost import CostModel
from ead_sdk.errors import TraceError

FORMAT_VERSION = 1
"""The trace format version this SDK writes (and the newest it reads)."""

META_KEY = b"ead_sdk.trace"
"""The Arrow schema-metadata key holding the JSON-encoded `TraceMeta`."""

META_CRC_KEY = b"ead_sdk.trace.crc32"
"""The schema-metadata key holding the CRC-32 (decimal) of that JSON (see ``traces/integrity.py``)."""

POSITION_COLUMNS = (
    "token_ids",
    "emitted_by",
    "entropy",
    "token_logprob",
    "top_ids",
    "top_logprobs",
)
"""Columns with one entry per generated position (all of equal length within a row)."""

FIELD_COLUMNS = ("sequence_id", "prompt_id", "reference", "correct", "extra")
"""Optional per-sequence task fields (nullable columns)."""


@dataclass(frozen=True)
class TraceMeta:
    """Schema metadata shared by every sequence of a trace.

    Attributes:
        format_version: the trace format version (`FORMAT_VERSION` when written by this SDK).
        model_names: the models, smallest first.
        param_counts: each model's parameter count (the default cost model).
        vocab_size: the shared vocabulary size; every token id is below it.
        tokenizer_fingerprint: identifies the tokenizer (e.g. a hash of its vocabulary).
        k: how many top tokens are recorded per model and position (0: none).
        generation: JSON-able recording settings (sampling, max_new_tokens, policy spec...).
    """

    format_version: int
    model_names: tuple[str, ...]
    param_counts: tuple[int, ...]
    vocab_size: int
    tokenizer_fingerprint: str
    k: int
    generation: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_names", tuple(str(n) for n in self.model_names))
        object.__setattr__(self, "param_counts", tuple(int(c) for c in self.param_counts))
        object.__setattr__(self, "generation", dict(self.generation))
        if not self.model_names:
            raise TraceError("trace metadata: at least one model is needed")
        if len(self.param_counts) != len(self.model_names):
            raise TraceError(
                f"trace metadata: {len(self.param_counts)} parameter counts for {len(self.model_names)} models"
            )
        if any(c <= 0 for c in self.param_counts):
            raise TraceError(f"trace metadata: parameter counts must be positive, got {self.param_counts}")
        if int(self.vocab_size) <= 0:
            raise TraceError(f"trace metadata: vocab_size must be positive, got {self.vocab_size}")
        if int(self.k) < 0 or int(self.k) > int(self.vocab_size):
            raise TraceError(f"trace metadata: k must be in [0, vocab_size], got {self.k}")

    @property
    def num_models(self) -> int:
        """``M``, the number of models (routes are ``0 .. M-1``)."""
        return len(self.model_names)

    def cost_model(self) -> CostModel:
        """The default cost model: cost proportional to parameter count."""
        return CostModel.from_param_counts(self.param_counts, self.model_names)

    def to_json(self) -> str:
        """The JSON stored under `META_KEY` in the Arrow schema metadata."""
        return json.dumps(
            {
                "format_version": int(self.format_version),
                "model_names": list(self.model_names),
                "param_counts": list(self.param_counts),
                "vocab_size": int(self.vocab_size),
                "tokenizer_fingerprint": self.tokenizer_fingerprint,
                "k": int(self.k),
                "generation": self.generation,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<trace>") -> TraceMeta:
        """Parse and check the stored metadata; refuse a newer or unknown format version."""
        try:
            raw = strict_json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TraceError(f"{source}: trace metadata is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise TraceError(f"{source}: trace metadata must be a JSON object")
        version = raw.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise TraceError(f"{source}: unknown trace format version {version!r}")
        if version > FORMAT_VERSION:
            raise TraceError(
                f"{source}: trace format version {version} is newer than this SDK reads "
                f"(up to {FORMAT_VERSION}); upgrade ead-sdk"
            )
        missing = [
            k for k in ("model_names", "param_counts", "vocab_size", "tokenizer_fingerprint", "k") if k not in raw
        ]
        if missing:
            raise TraceError(f"{source}: trace metadata lacks {missing}")
        try:
            return cls(
                format_version=version,
                model_names=tuple(raw["model_names"]),
                param_counts=tuple(raw["param_counts"]),
                vocab_size=int(raw["vocab_size"]),
                tokenizer_fingerprint=str(raw["tokenizer_fingerprint"]),
                k=int(raw["k"]),
                generation=dict(raw.get("generation") or {}),
            )
        except TraceError as exc:
            raise TraceError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise TraceError(f"{source}: malformed trace metadata ({exc})") from None

    def with_generation(self, **settings: Any) -> TraceMeta:
        """A copy with ``settings`` merged into `generation`."""
        return replace(self, generation={**self.generation, **settings})


@dataclass(frozen=True)
class SequenceTrace:
    """One generated sequence, every model scored teacher-forced along its trajectory.

    Attributes:
        prompt_ids: int32 ``(P,)`` the prompt.
        token_ids: int32 ``(T,)`` the generated trajectory.
        emitted_by: int8 ``(T,)`` the model that emitted each token when recorded.
        entropy: float32 ``(T, M)`` entropy in nats of each model's distribution at each position.
        token_logprob: float32 ``(T, M)`` log-probability of the trajectory's token under
            each model.
        top_ids: int32 ``(T, M, k)`` each model's top-k token ids, or ``None``.
        top_logprobs: float32 ``(T, M, k)`` their log-probabilities, sorted descending, or
            ``None``.
        fields: optional task fields: ``sequence_id`` (int), ``prompt_id`` (str), ``reference``
            (str), ``correct`` (tuple of bool, one per single-model run), anything else JSON-able.
    """

    prompt_ids: np.ndarray
    token_ids: np.ndarray
    emitted_by: np.ndarray
    entropy: np.ndarray
    token_logprob: np.ndarray
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None
    fields: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        """``T``, the number of generated tokens."""
        return int(np.shape(self.token_ids)[0])

    @property
    def num_models(self) -> int:
        """``M``, from the entropy array."""
        return int(np.shape(self.entropy)[1]) if np.ndim(self.entropy) == 2 else 0

    @classmethod
    def build(
        cls,
        *,
        prompt_ids: Any,
        token_ids: Any,
        emitted_by: Any,
        entropy: Any,
        token_logprob: Any,
        top_ids: Any = None,
        top_logprobs: Any = None,
        fields: Mapping[str, Any] | None = None,
    ) -> SequenceTrace:
        """Coerce array-likes to the record's dtypes (no validation: see `validate_sequence`)."""
        return cls(
            prompt_ids=np.asarray(prompt_ids, np.int32).reshape(-1),
            token_ids=np.asarray(token_ids, np.int32).reshape(-1),
            emitted_by=np.asarray(emitted_by, np.int8).reshape(-1),
            entropy=np.asarray(entropy, np.float32),
            token_logprob=np.asarray(token_logprob, np.float32),
            top_ids=None if top_ids is None else np.asarray(top_ids, np.int32),
            top_logprobs=None if top_logprobs is None else np.asarray(top_logprobs, np.float32),
            fields=dict(fields or {}),
        )


def trace_schema(meta: TraceMeta) -> pa.Schema:
    """The Arrow schema of a trace with ``meta`` (top-k columns only when ``meta.k > 0``).

    Per-position, per-model values are ``list<fixed_size_list<_, M>>`` (``M * k`` for top-k,
    model-major: ``[m0 top0..top(k-1), m1 top0..]``), so flattening a batch is a reshape.
    """
    m, k = meta.num_models, int(meta.k)
    per_model = pa.list_(pa.float32(), m)
    fields = [
        pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("emitted_by", pa.list_(pa.int8()), nullable=False),
        pa.field("entropy", pa.list_(per_model), nullable=False),
        pa.field("token_logprob", pa.list_(per_model), nullable=False),
    ]
    if k > 0:
        fields += [
            pa.field("top_ids", pa.list_(pa.list_(pa.int32(), m * k)), nullable=False),
            pa.field("top_logprobs", pa.list_(pa.list_(pa.float32(), m * k)), nullable=False),
        ]
    fields += [
        pa.field("sequence_id", pa.int64()),
        pa.field("prompt_id", pa.string()),
        pa.field("reference", pa.string()),
        pa.field("correct", pa.list_(pa.bool_(), m)),
        pa.field("extra", pa.string()),
    ]
    raw = meta.to_json().encode()
    return pa.schema(fields, metadata={META_KEY: raw, META_CRC_KEY: str(zlib.crc32(raw)).encode()})
