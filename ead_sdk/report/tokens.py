"""Token ids to text for a report: the user's tokenizer, the demo's for demo traces, else ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ead_sdk.errors import ReportError, TokenizerMismatchError
from ead_sdk.traces.schema import TraceMeta

Decode = Callable[..., Any]


def ids_decoder(ids: list[int], joined: bool) -> Any:
    """Token ids shown as ids (no tokenizer): one ``⟨id⟩`` per token."""
    pieces = [f"⟨{i}⟩" for i in ids]
    return "".join(pieces) if joined else pieces


def _load(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ReportError(f"--tokenizer {path}: not a tokenizer directory ({exc})") from None


def tokenizer_decoder(path: Path, meta: TraceMeta, *, strict: bool) -> tuple[Decode, str] | None:
    """A decoder for the tokenizer at ``path``, checked against the trace's fingerprint.

    Each distinct id is decoded once, alone (a byte-level piece that is part of a multi-byte
    character shows as a replacement mark). With ``strict`` a fingerprint mismatch is an error;
    otherwise it returns ``None`` and the caller shows ids.
    """
    if not path.exists():
        raise FileNotFoundError(2, "no such tokenizer directory", str(path))
    from ead_sdk.backends.hf import tokenizer_fingerprint

    tok = _load(path)
    found = tokenizer_fingerprint(tok)
    if meta.tokenizer_fingerprint and found != meta.tokenizer_fingerprint:
        if strict:
            raise TokenizerMismatchError(
                f"--tokenizer {path}: fingerprint {found} differs from the trace's {meta.tokenizer_fingerprint}"
            )
        return None
    cache: dict[int, str] = {}

    def decode(ids: list[int], joined: bool) -> Any:
        if joined:
            return tok.decode(ids)
        missing = sorted({i for i in ids if i not in cache})
        if missing:
            cache.update(zip(missing, tok.batch_decode([[i] for i in missing]), strict=True))
        return [cache[i] for i in ids]

    return decode, str(path)


def pick_decoder(meta: TraceMeta, tokenizer: Path | None) -> tuple[Decode, str | None]:
    """The decoder for a report: ``tokenizer`` if given, the demo's when it matches the trace, else ids."""
    if tokenizer is not None:
        found = tokenizer_decoder(tokenizer, meta, strict=True)
        assert found is not None
        return found
    try:
        from ead_sdk.demo import tokenizer_dir

        found = tokenizer_decoder(tokenizer_dir(), meta, strict=False)
    except ImportError:  # no transformers: show ids
        found = None
    return found if found is not None else (ids_decoder, None)
