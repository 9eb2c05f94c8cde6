"""The engines behind ``ead serve``: an OpenAI-compatible URL, or a local model folder run by vLLM in process.

``--small``, ``--mid`` and ``--large`` each name one upstream. A URL (``http://host:port`` or
``.../v1``) becomes an `ead_sdk.backends.openai_engine.OpenAIEngine` (top-k log-probabilities
only); a folder becomes an `ead_sdk.backends.vllm_engine.VLLMEngine` (exact entropy). The
tokenizer comes from ``--tokenizer``, else from a local model folder, else from an engine that has one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ead_sdk.errors import ServeError
from ead_sdk.serving import ServingEngine


def is_url(source: str) -> bool:
    """True for an ``http://`` or ``https://`` upstream."""
    return source.startswith(("http://", "https://"))


def api_base(url: str) -> str:
    """``url`` as an OpenAI API base: ``http://host:port`` and ``http://host:port/v1`` both give the latter."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def open_engine(
    source: str, name: str, tokenizer: Any = None, *, timeout: float = 60.0, num_params: int | None = None
) -> ServingEngine:
    """The engine serving ``source`` (a URL or a model folder), labelled ``name``."""
    if is_url(source):
        from ead_sdk.backends.openai_engine import OpenAIEngine

        return OpenAIEngine(
            api_base(source), name=name, tokenizer=tokenizer, read_timeout=timeout, num_params=num_params
        )
    folder = Path(source)
    if not folder.is_dir():
        raise ServeError(f"upstream {name!r}: {source!r} is neither an http(s) URL nor a model folder")
    from ead_sdk.backends.vllm_engine import VLLMEngine

    return VLLMEngine(folder, name=name)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The Hugging Face tokenizer in folder ``path`` (never remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ServeError(f"tokenizer {str(path)!r}: cannot be loaded ({exc})") from None


def pick_tokenizer(tokenizer: str | None, sources: Sequence[str]) -> Any:
    """The tokenizer given, else the first local model folder's; ``None`` when neither exists."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    for source in sources:
        if not is_url(source) and Path(source).is_dir():
            return load_tokenizer(source)
    return None


def ladder_names(count: int) -> list[str]:
    """Names for a ladder of ``count`` upstreams: small, mid, mid2, ..., large."""
    if count == 2:
        return ["small", "large"]
    middle = ["mid"] + [f"mid{i}" for i in range(2, count - 1)]
    return ["small", *middle, "large"]
