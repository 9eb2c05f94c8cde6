"""ead_generate: the policy's routed decoding behind transformers' generate(custom_generate=...)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ead_sdk.interface import ESCALATIONS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import LogitsProcessorList, MinLengthLogitsProcessor  # noqa: E402

import ead_sdk  # noqa: E402
from ead_sdk.backends.hf import TransformersBackend  # noqa: E402
from ead_sdk.errors import BackendError  # noqa: E402
from ead_sdk.integrations import EadGenerateOutput, custom_generate_path, ead_generate  # noqa: E402
from ead_sdk.testing.models import tiny_llama  # noqa: E402
from ead_sdk.traces import read_traces  # noqa: E402

VOCAB = 64
ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def tiny(layers: int, hidden: int, seed: int) -> Any:
    """A random Llama whose next-token entropies spread over (0, 2.5) nats (initializer_range=1)."""
    return tiny_llama(layers, hidden, vocab=VOCAB, seed=seed, initializer_range=1.0)


SMALL, LARGE = tiny(1, 16, seed=1), tiny(2, 32, seed=3)


def spec(threshold: float = 1.0, escalation: str = "next") -> dict:
    return {
        "policy": "rolling_entropy",
        "version": 1,
        "escalation": escalation,
        "params": {"window": 2, "threshold": threshold, "unit": "nats"},
    }


def batch(prompts: list[list[int]]) -> tuple[Any, Any]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def direct(prompts: list[list[int]], policy: Any, eos: list[int], **kw: Any) -> ead_sdk.GenerateResult:
    """The SDK's own decoder on the same models: what ead_generate must reproduce."""
    return ead_sdk.generate(TransformersBackend([SMALL, LARGE], eos_token_id=eos), policy, prompts, **kw)


def check_same(out: EadGenerateOutput, ids: Any, ref: ead_sdk.GenerateResult) -> None:
    width = ids.shape[1]
    assert torch.equal(out.sequences[:, :width], ids)
    for i, lane in enumerate(ref):
        t = len(lane.tokens)
        assert out.sequences[i, width : width + t].tolist() == list(lane.tokens)
        assert out.routes[i, :t].tolist() == list(lane.models)
        assert (out.routes[i, t:] == -1).all() and (out.sequences[i, width + t :] == 0).all()
    assert out.report == ref.report


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        pad_token="<pad>",
        bos_token="<bos>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )


prompt_lists = st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=6), min_size=1, max_size=3)


@settings(max_examples=12)
@given(
    prompts=prompt_lists,
    threshold=st.floats(0.3, 2.0),
    escalation=st.sampled_from(ESCALATIONS),
    sample=st.booleans(),
    seed=st.integers(0, 2**16),
    eos=st.sampled_from([[], [7], [7, 20]]),
)
def test_same_tokens_and_routes_as_the_sdk_decoder(prompts, threshold, escalation, sample, seed, eos):
    """For any left-padded batch, threshold, escalation mode, end-of-sequence ids, greedy or
    seeded sampling: generate(custom_generate=ead_generate) emits the tokens and routes that
    ead_sdk.generate emits on the same models, with the same cost report."""
    ids, mask = batch(prompts)
    kw = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0) if sample else {}
    out = LARGE.generate(
        ids,
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=spec(threshold, escalation),
        ead_models=[SMALL],
        ead_seed=seed,
        max_new_tokens=8,
        eos_token_id=eos,
        pad_token_id=0,
        return_dict_in_generate=True,
        **kw,
    )
    sampling = ead_sdk.Sampling(do_sample=True, temperature=0.7, top_p=0.9, seed=seed) if sample else None
    ref = direct(prompts, ead_sdk.load_policy(spec(threshold, escalation)), eos, max_new_tokens=8, sampling=sampling)
    check_same(out, ids, ref)


def test_the_policy_switches_in_the_compared_runs():
    """Keeps the comparison above meaningful: with these models both rungs emit tokens."""
    ref = direct([[5, 9, 11], [7, 8, 4, 4]], ead_sdk.load_policy(spec(1.0)), [], max_new_tokens=12)
    assert {0, 1} <= {m for lane in ref for m in lane.models}


def test_paths_spec_files_and_either_model_as_caller(tmp_path):
    SMALL.save_pretrained(tmp_path / "small")
    LARGE.save_pretrained(tmp_path / "large")
    ead_sdk.save_policy(ead_sdk.load_policy(spec()), tmp_path / "spec.json")
    ids, mask = batch([[5, 9, 11], [7]])
    kw = dict(
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=str(tmp_path / "spec.json"),
        max_new_tokens=6,
        eos_token_id=[],
        pad_token_id=0,
    )
    from_large = LARGE.generate(ids, ead_models=[str(tmp_path / "small")], **kw)
    from_small = SMALL.generate(ids, ead_models=[tmp_path / "large"], **kw)
    assert isinstance(from_large, torch.Tensor) and torch.equal(from_large, from_small)
    ref = direct([[5, 9, 11], [7]], ead_sdk.load_policy(spec()), [], max_new_tokens=6)
    assert from_large[:, 3:].tolist() == [list(lane.tokens) for lane in ref]


def test_the_global_torch_seed_makes_sampling_reproducible():
    ids, mask = batch([[5, 9, 11]])
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(
            LARGE.generate(
                ids,
                attention_mask=mask,
                custom_generate=ead_generate,
                ead_policy=spec(),
                ead_models=[SMALL],
                max_new_tokens=8,
                do_sample=True,
                top_k=0,
                eos_token_id=[],
            )
        )
    assert torch.equal(runs[0], runs[1])


def test_the_custom_generate_folder_gives_the_same_output(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep the copy out of ~/.cache
    ids, mask = batch([[5, 9, 11], [7, 8]])
    kw = dict(
        attention_mask=mask, ead_policy=spec(), ead_models=[SMALL], max_new_tokens=6, eos_token_id=[7], pad_token_id=0
    )
    by_callable = LARGE.generate(ids, custom_generate=ead_generate, **kw)
    by_folder = LARGE.generate(ids, custom_generate=custom_generate_path(), trust_remote_code=True, **kw)
    assert torch.equal(by_callable, by_folder)
    assert (Path(custom_generate_path()) / "custom_generate" / "generate.py").is_file()


def test_records_the_run_as_a_trace(tmp_path):
    ids, mask = batch([[5, 9, 11], [7]])
    out = LARGE.generate(
        ids,
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=spec(),
        ead_models=[SMALL],
        ead_record=str(tmp_path / "run.arrows"),
        ead_record_k=2,
        max_new_tokens=5,
        eos_token_id=[],
        return_dict_in_generate=True,
    )
    traces = read_traces(tmp_path / "run.arrows")
    assert traces.meta.num_models == 2 and len(traces) == 2
    rows = sorted(traces.sequences(), key=lambda r: r.fields["sequence_id"])
    for i, row in enumerate(rows):
        assert row.emitted_by.tolist() == out.routes[i, : row.length].tolist()


def test_stop_strings_with_the_tokenizer():
    """transformers keeps its tokenizer from custom_generate callables: stop strings go in ead_stop."""
    tok = word_tokenizer()
    probe = direct([[5, 9, 11]], ead_sdk.load_policy(spec()), [], max_new_tokens=8)
    stop = tok.decode([probe[0].tokens[3]])  # the 4th generated word ends the lane
    ids, mask = batch([[5, 9, 11]])
    out = LARGE.generate(
        ids,
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=spec(),
        ead_models=[SMALL],
        ead_tokenizer=tok,
        ead_stop=[stop],
        max_new_tokens=8,
        eos_token_id=[],
    )
    ref = ead_sdk.generate(
        TransformersBackend([SMALL, LARGE], tokenizer=tok, eos_token_id=[]),
        ead_sdk.load_policy(spec()),
        [[5, 9, 11]],
        max_new_tokens=8,
        stop=[stop],
    )
    assert out[0, 3:].tolist() == list(ref[0].tokens) and len(ref[0].tokens) <= 4


def test_a_model_in_training_mode_is_left_in_it():
    LARGE.train()
    try:
        ids, mask = batch([[5, 9]])
        LARGE.generate(
            ids,
            attention_mask=mask,
            custom_generate=ead_generate,
            ead_policy=spec(),
            ead_models=[SMALL],
            max_new_tokens=2,
        )
        assert LARGE.training
    finally:
        LARGE.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_beams=2), "num_beams"),
        (dict(do_sample=True, top_k=50), "top_k"),
        (dict(logits_processor=LogitsProcessorList([MinLengthLogitsProcessor(3, 1)])), "MinLengthLogitsProcessor"),
        (dict(repetition_penalty=1.3), "RepetitionPenalty"),
        (dict(output_scores=True, return_dict_in_generate=True), "output_scores"),
        (dict(ead_stop=["w5"]), "stop strings need a tokenizer"),
        (dict(ead_models=["/nonexistent/model"]), "cannot load"),
        (dict(ead_models=[object()]), "neither a transformers model"),
    ],
)
def test_unsupported_settings_are_refused_clearly(kwargs, message):
    ids, mask = batch([[5, 9, 11]])
    base = dict(
        attention_mask=mask, custom_generate=ead_generate, ead_policy=spec(), ead_models=[SMALL], max_new_tokens=3
    )
    with pytest.raises(BackendError, match=message):
        LARGE.generate(ids, **{**base, **kwargs})


def test_a_missing_policy_or_right_padding_is_refused():
    ids, mask = batch([[5, 9, 11]])
    with pytest.raises(BackendError, match="ead_policy"):
        LARGE.generate(ids, attention_mask=mask, custom_generate=ead_generate, ead_models=[SMALL], max_new_tokens=2)
    right = torch.tensor([[5, 9, 0], [5, 9, 11]])
    with pytest.raises(BackendError, match="left-padded"):
        LARGE.generate(
            right,
            attention_mask=(right != 0).long(),
            custom_generate=ead_generate,
            ead_policy=spec(),
            ead_models=[SMALL],
            max_new_tokens=2,
        )


def test_importing_the_integrations_loads_neither_torch_nor_transformers():
    code = "import sys, ead_sdk, ead_sdk.integrations as i; i.__all__; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- "done when": the few lines of docs/production.md, run verbatim ----------------------------
def doc_block() -> str:
    text = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- production-quickstart[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert found, "docs/production.md lost its tested quickstart block"
    return found.group(1)


def test_the_production_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    tokenizer = word_tokenizer()
    for name, model in (("small", SMALL), ("large", LARGE)):
        model.save_pretrained(tmp_path / "models" / name)
        tokenizer.save_pretrained(tmp_path / "models" / name)
    policy = ead_sdk.load_policy(spec())  # what `ead calibrate` writes: save_policy's output
    ead_sdk.save_policy(policy, tmp_path / "spec.json")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(doc_block(), "docs/production.md", "exec"), scope)
    out, inputs = scope["out"], scope["inputs"]
    assert "tensor(" in capsys.readouterr().out  # the block's prints ran
    prompts = [row[m.bool()].tolist() for row, m in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
    ref = direct(prompts, policy, [tokenizer.eos_token_id], max_new_tokens=32)
    check_same(out, inputs["input_ids"], ref)


def test_a_three_model_ladder_and_logprob_policies_match_the_sdk_decoder():
    medium = tiny(1, 24, seed=2)
    ids, mask = batch([[5, 9, 11], [7, 8]])
    ladder = {"policy": "rolling_entropy", "params": {"window": 1, "threshold": [0.8, 1.6], "unit": "nats"}}
    out = medium.generate(
        ids,
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=ladder,
        ead_models=[LARGE, SMALL],
        max_new_tokens=10,
        eos_token_id=[],
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    backend = TransformersBackend([SMALL, medium, LARGE], eos_token_id=[])
    ref = ead_sdk.generate(backend, ead_sdk.load_policy(ladder), [[5, 9, 11], [7, 8]], max_new_tokens=10)
    check_same(out, ids, ref)
    assert set(out.routes.flatten().tolist()) >= {0, 1, 2}  # every rung emitted tokens
    confidence = {"policy": "confidence", "params": {"threshold": 0.6}}
    out = LARGE.generate(
        ids,
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=confidence,
        ead_models=[SMALL],
        ead_logprobs="full",
        max_new_tokens=10,
        eos_token_id=[],
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    ref = direct([[5, 9, 11], [7, 8]], ead_sdk.load_policy(confidence), [], max_new_tokens=10, logprobs="full")
    check_same(out, ids, ref)
    assert {0, 1} <= set(out.routes.flatten().tolist())


def test_a_spec_written_by_ead_calibrate_decodes_in_transformers(tmp_path):
    """The whole path: record a trace, `ead calibrate --out spec.json`, then generate with it."""
    from typer.testing import CliRunner

    from ead_sdk.cli import app

    prompts = [[5, 9, 11], [7, 8], [4, 4, 6], [12, 30, 31, 3], [40], [50, 51]]
    ead_sdk.generate(
        TransformersBackend([SMALL, LARGE], eos_token_id=[]),
        ead_sdk.load_policy(spec()),
        prompts,
        max_new_tokens=12,
        record=str(tmp_path / "trace.arrows"),
    )
    start = json.dumps({"policy": "rolling_entropy", "params": {"window": 2, "unit": "nats"}})
    run = CliRunner().invoke(
        app,
        [
            "calibrate",
            str(tmp_path / "trace.arrows"),
            "--policy",
            start,
            "--param",
            "threshold",
            "--target-large-share",
            "0.4",
            "--out",
            str(tmp_path / "spec.json"),
        ],
    )
    assert run.exit_code == 0, run.output
    ids, mask = batch(prompts[:2])
    out = LARGE.generate(
        ids,
        attention_mask=mask,
        custom_generate=ead_generate,
        ead_policy=str(tmp_path / "spec.json"),
        ead_models=[SMALL],
        max_new_tokens=12,
        eos_token_id=[],
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    calibrated = ead_sdk.load_policy(tmp_path / "spec.json")
    check_same(out, ids, direct(prompts[:2], calibrated, [], max_new_tokens=12))
