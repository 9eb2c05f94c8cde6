"""``ead_sdk.demo.assets()``: the shipped pair, traces and prompts, found whatever the current directory."""

from __future__ import annotations

import json
import os

from ead_sdk.demo import assets, model_dirs


def test_assets_are_absolute_and_exist_from_any_directory(tmp_path):
    before = os.getcwd()
    os.chdir(tmp_path)
    try:
        demo = assets()
    finally:
        os.chdir(before)
    for path in (demo.small, demo.large, demo.tokenizer, demo.traces, demo.prompts, demo.results):
        assert path.is_absolute() and path.exists(), path
    assert list(demo.models) == model_dirs()
    for model in demo.models:  # each model directory carries the shared tokenizer
        assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()


def test_shipped_traces_and_prompts_are_readable():
    from ead_sdk.traces import read_traces

    demo = assets()
    traces = read_traces(demo.traces)
    assert len(traces) == 192 and traces.meta.model_names == ("small", "large")
    texts = demo.prompt_texts()
    assert len(texts) >= 8 and all(isinstance(t, str) and t for t in texts)
    lines = demo.prompts.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["prompt"] for line in lines] == texts


def test_the_pair_loads_from_the_paths_as_given():
    """``TransformersBackend(assets().models)``: pathlib paths are local paths like strings."""
    import pytest

    pytest.importorskip("transformers")
    from ead_sdk.backends.hf import TransformersBackend

    backend = TransformersBackend(assets().models)
    assert backend.num_models == 2 and backend.param_counts[0] < backend.param_counts[1]
    assert backend.model_names == TransformersBackend([str(p) for p in assets().models]).model_names
