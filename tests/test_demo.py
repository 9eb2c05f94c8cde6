"""The embedded demo: its shipped trace, weights, tokenizer and task, checked against independent references."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ead_sdk.demo import demo_dir, large_model_dir, model_dirs, small_model_dir, task, tokenizer_dir, weights_dir
from ead_sdk.demo.record_traces import SEQUENCES, TRAJECTORY_SPEC, default_traces_path, trace_prompts
from ead_sdk.traces import read_traces, validate_table

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
torch.set_num_threads(1)

LN2 = math.log(2)
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any, Any]:
    """``(tokenizer, small, large)`` loaded from the committed folders."""
    from ead_sdk.demo.evaluate_pair import load_pair

    return load_pair()


@pytest.fixture(scope="module")
def shipped() -> Any:
    return read_traces(default_traces_path())


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def next_token_logprobs(model: Any, ids: list[int]) -> np.ndarray:
    """Reference: float64 log-softmax of ``model`` at every position of one unbatched, uncached forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].double()
    return torch.log_softmax(logits, -1).cpu().numpy()


# ------------------------------------------------------------------------------ the shipped trace


def test_the_shipped_trace_validates(shipped: Any) -> None:
    """Every value of the shipped trace passes validation; it carries the task fields of every sequence."""
    validate_table(shipped.meta, shipped.table, str(default_traces_path()))
    assert len(shipped) == SEQUENCES == 192
    assert shipped.meta.k == 8 and shipped.meta.vocab_size == task.VOCAB_SIZE
    assert shipped.meta.generation["policy"]["policy"] == TRAJECTORY_SPEC["policy"]
    for column in ("sequence_id", "prompt_id", "reference", "correct"):
        assert shipped.table.column(column).null_count == 0, column
    assert sorted(s.fields["sequence_id"] for s in shipped) == list(range(192))


def test_the_shipped_trace_names_the_demo_pair(shipped: Any, pair: tuple[Any, Any, Any]) -> None:
    """Model names, parameter counts and tokenizer fingerprint are those of the committed models."""
    from ead_sdk.backends.hf import tokenizer_fingerprint

    tok, small, large = pair
    assert shipped.meta.model_names == ("small", "large")
    assert shipped.meta.param_counts == (n_params(small), n_params(large))
    assert shipped.meta.tokenizer_fingerprint == tokenizer_fingerprint(tok)


def test_the_shipped_prompts_are_disjoint_from_the_evaluation_prompts(shipped: Any) -> None:
    """Calibrating on the traces never sees the first 1000 held-out prompts that ``ead eval``/``ead demo`` score."""
    ids = [s.fields["prompt_id"] for s in shipped]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {p.id for p in task.load_eval_prompts(1000)}
    assert set(ids) == {p.id for p in trace_prompts()}


def test_the_shipped_prompts_and_references_are_the_tasks(shipped: Any) -> None:
    """Each sequence's prompt ids encode its held-out prompt, and its reference is that prompt's target line."""
    items = {p.id: p for p in task.load_eval_prompts(None)}
    for seq in shipped:
        item = items[seq.fields["prompt_id"]]
        assert seq.prompt_ids.tolist() == task.encode(item.prompt)
        assert seq.fields["reference"] == item.target + "\n"


def test_the_shipped_trajectory_is_greedy_and_stops_at_the_line_end(shipped: Any) -> None:
    """Each token is the argmax of the model that emitted it; a sequence ends at a newline or the token limit."""
    limit = shipped.meta.generation["max_new_tokens"]
    for seq in shipped:
        rows = np.arange(seq.length)
        assert (seq.top_ids[rows, seq.emitted_by, 0] == seq.token_ids).all()
        assert 1 <= seq.length <= limit
        assert seq.token_ids[-1] == ord("\n") or seq.length == limit
        assert ord("\n") not in seq.token_ids[:-1]
    share = np.concatenate([s.emitted_by for s in shipped]).mean()
    assert 0.1 < share < 0.6  # both models emit: the path mixes them as a routed decode does


def test_the_shipped_signals_are_the_models_teacher_forced(shipped: Any, pair: tuple[Any, Any, Any]) -> None:
    """Entropy, token log-probability and top-k of both models equal an uncached float64 forward (first 6 rows)."""
    _, small, large = pair
    for seq in list(shipped)[:6]:
        ids = np.concatenate([seq.prompt_ids, seq.token_ids]).tolist()
        p, t = len(seq.prompt_ids), seq.length
        for m, model in enumerate((small, large)):
            lp = next_token_logprobs(model, ids)[p - 1 : p - 1 + t]
            entropy = -(np.exp(lp) * lp).sum(-1)
            np.testing.assert_allclose(seq.entropy[:, m], entropy, atol=1e-4)
            np.testing.assert_allclose(seq.token_logprob[:, m], lp[np.arange(t), seq.token_ids], atol=1e-4)
            top = np.sort(lp, -1)[:, ::-1][:, :8]
            np.testing.assert_allclose(seq.top_logprobs[:, m], top, atol=1e-4)


def greedy_line(model: Any, prompt_ids: list[int], limit: int) -> bytes:
    """Reference greedy completion: one uncached forward per token, stop after a newline or EOS."""
    ids, out = list(prompt_ids), bytearray()
    for _ in range(limit):
        token = int(next_token_logprobs(model, ids)[-1].argmax())
        if token >= 256:
            break
        out.append(token)
        ids.append(token)
        if token == ord("\n"):
            break
    return bytes(out)


def test_the_shipped_labels_are_single_model_exact_matches(shipped: Any, pair: tuple[Any, Any, Any]) -> None:
    """``correct[m]`` is whether model ``m``'s own greedy completion is exactly the reference (a few sequences)."""
    _, small, large = pair
    limit = shipped.meta.generation["max_new_tokens"]
    labelled = [s for s in shipped if any(s.fields["correct"])][:2]
    unlabelled = [s for s in shipped if not any(s.fields["correct"])][:1]
    assert labelled and unlabelled
    for seq in labelled + unlabelled:
        reference = seq.fields["reference"].encode()
        for m, model in enumerate((small, large)):
            line = greedy_line(model, seq.prompt_ids.tolist(), limit)
            assert (line == reference) == seq.fields["correct"][m], (seq.fields["prompt_id"], m, line)


# ------------------------------------------------------------------------------ the weights


def test_the_weights_are_safetensors_only_and_small() -> None:
    """No pickle-based file anywhere in the demo; both models and the tokenizer total at most 30 MB."""
    files = [p for p in demo_dir().rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES]
    for d in model_dirs():
        assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    total = sum(p.stat().st_size for p in weights_dir().rglob("*") if p.is_file())
    assert total <= 30_000_000, total


def test_the_weights_load_with_safetensors(pair: tuple[Any, Any, Any]) -> None:
    """Each safetensors file holds exactly the loaded model's parameters (tied head stored once)."""
    from safetensors.numpy import load_file

    _, small, large = pair
    for d, model, (layers, width) in ((small_model_dir(), small, (1, 64)), (large_model_dir(), large, (4, 192))):
        tensors = load_file(str(d / "model.safetensors"))
        assert sum(v.size for v in tensors.values()) == n_params(model)
        state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        for name, value in tensors.items():
            np.testing.assert_array_equal(state[name], value)
        cfg = model.config
        assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (layers, width, task.VOCAB_SIZE)
        assert cfg.tie_word_embeddings and type(model).__name__ == "LlamaForCausalLM"
    assert n_params(small) * 20 < n_params(large)


def held_out_slice(windows: int = 8, length: int = 320) -> list[np.ndarray]:
    """``windows`` stretches of ``length`` held-out bytes, spread evenly over the held-out stream."""
    stream = task.eval_tokens()
    starts = np.linspace(0, len(stream) - length - 1, windows).astype(int)
    return [np.asarray(stream[s : s + length], dtype=np.int64) for s in starts]


@pytest.fixture(scope="module")
def held_out_scores(pair: tuple[Any, Any, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Per byte of the held-out slice, each model's log-probability, entropy and argmax-correctness."""
    _, small, large = pair
    out: dict[str, dict[str, list[np.ndarray]]] = {"small": {}, "large": {}}
    for window in held_out_slice():
        target = window[1:]
        keep = target < 256  # bytes only, not the end-of-file token
        for name, model in (("small", small), ("large", large)):
            lp = next_token_logprobs(model, window.tolist())[:-1]
            scores = {
                "logp": lp[np.arange(len(target)), target],
                "entropy": -(np.exp(lp) * lp).sum(-1),
                "correct": lp.argmax(-1) == target,
            }
            for key, value in scores.items():
                out[name].setdefault(key, []).append(value[keep])
    return {name: {k: np.concatenate(v) for k, v in d.items()} for name, d in out.items()}


def test_the_large_model_beats_the_small_one_on_held_out_bytes(
    held_out_scores: dict[str, dict[str, np.ndarray]],
) -> None:
    """Teacher-forced on ~2.5k held-out bytes: large has clearly fewer bits/byte and higher next-byte accuracy."""
    small, large = held_out_scores["small"], held_out_scores["large"]
    assert len(small["logp"]) > 2000
    bpb_small, bpb_large = -small["logp"].mean() / LN2, -large["logp"].mean() / LN2
    assert bpb_large < bpb_small - 0.3, (bpb_small, bpb_large)
    assert large["correct"].mean() > small["correct"].mean() + 0.05


def test_the_small_model_is_confident_and_right_on_easy_bytes(
    held_out_scores: dict[str, dict[str, np.ndarray]],
) -> None:
    """Where the small model's entropy is below 0.5 bits (a good share of bytes) its argmax is nearly always right."""
    small = held_out_scores["small"]
    easy = small["entropy"] / LN2 < 0.5
    assert easy.mean() > 0.1
    assert small["correct"][easy].mean() > 0.9
    assert small["correct"][easy].mean() > small["correct"][~easy].mean() + 0.2


def test_teacher_forced_scoring_equals_the_reference(pair: tuple[Any, Any, Any]) -> None:
    """`evaluate_pair.teacher_forced` in one window equals the uncached float64 reference."""
    from ead_sdk.demo.evaluate_pair import teacher_forced

    _, small, _ = pair
    window = held_out_slice(1, 300)[0]
    got = teacher_forced(small, window, ctx=320)
    lp = next_token_logprobs(small, window.tolist())[:-1]
    np.testing.assert_allclose(got["logp"], lp[np.arange(len(window) - 1), window[1:]], atol=1e-4)
    np.testing.assert_allclose(got["entropy"], -(np.exp(lp) * lp).sum(-1), atol=1e-4)


@settings(max_examples=200)
@given(n=st.integers(2, 3000), ctx=st.integers(2, 400), data=st.data())
def test_scoring_windows_score_every_target_once_with_context(n: int, ctx: int, data: st.DataObject) -> None:
    """`_windows` scores targets 1..n-1 exactly once, in order, each window within ``ctx`` tokens.

    After the first window every target has at least ``ctx - stride`` tokens of context; ``stride >= ctx`` is refused.
    """
    from ead_sdk.demo.evaluate_pair import _windows

    stride = data.draw(st.integers(1, ctx + 1))
    if stride >= ctx:  # a window would start on a target, which then has no context
        with pytest.raises(ValueError, match="stride"):
            list(_windows(n, ctx, stride))
        return
    scored: list[int] = []
    for start, first, end in _windows(n, ctx, stride):
        assert 0 <= start < first <= end <= n and end - start <= ctx
        if scored:
            assert first - start >= ctx - stride
        scored.extend(range(first, end))
    assert scored == list(range(1, n))


# ------------------------------------------------------------------------------ the tokenizer


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)


@settings(max_examples=150)
@given(text=st.text(max_size=80))
@example(text="<|pad|>x<|endoftext|>")  # special tokens spelled in text stay bytes
def test_the_tokenizer_is_one_id_per_utf8_byte(tok: Any, text: str) -> None:
    """For any text: the ids are its UTF-8 bytes (no special tokens added) and decoding gives the text back."""
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8")) == task.encode(text)
    assert tok.decode(ids) == text == task.decode(ids)


@settings(max_examples=150)
@given(data=st.binary(max_size=60))
def test_the_tokenizer_round_trips_arbitrary_bytes(tok: Any, data: bytes) -> None:
    """Any byte string, valid UTF-8 or not: id = byte value, the vocabulary symbols map back to the same bytes,
    and text decoding replaces invalid sequences exactly as Python's ``errors='replace'`` does."""
    from ead_sdk.demo.tokenizer import _bytes_to_unicode

    ids = list(data)
    back = {c: b for b, c in _bytes_to_unicode().items()}
    assert bytes(back[s] for s in tok.convert_ids_to_tokens(ids)) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace") == task.decode(task.encode(data))


def test_the_committed_tokenizer_is_the_script_s(tok: Any) -> None:
    """The committed tokenizer equals `build_tokenizer()`; it is stored once, and each model folder links to it."""
    from ead_sdk.backends.hf import tokenizer_fingerprint
    from ead_sdk.demo.tokenizer import build_tokenizer, check_tokenizer

    check_tokenizer(tok)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(build_tokenizer())
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (task.EOS_ID, task.PAD_ID, task.VOCAB_SIZE)
    for d in model_dirs():
        for f in tokenizer_dir().iterdir():
            assert (d / f.name).is_symlink() and (d / f.name).resolve() == f.resolve(), (d, f.name)


# ------------------------------------------------------------------------------ the task


@settings(max_examples=25)
@given(n=st.integers(0, 300))
def test_eval_prompts_are_a_fixed_prefix_of_one_order(n: int) -> None:
    """``load_eval_prompts(n)`` is the first ``n`` of the full order, whatever ``n``; ids are unique."""
    everything = task.load_eval_prompts(None)
    assert task.load_eval_prompts(n) == everything[:n]
    assert len({p.id for p in everything}) == len(everything) >= 1000


def test_eval_prompts_have_the_documented_shape() -> None:
    """Half cut: prompt = context + prefix of the line, target = the rest; line cut: the same lines, whole."""
    half, line = task.load_eval_prompts(None), task.load_eval_prompts(None, cut="line")
    assert [p.id for p in half] == [p.id for p in line]
    held = set(task.HELD_OUT_FILES)
    for h, w in zip(half, line, strict=True):
        assert h.file in held and h.id == f"{h.file}:{h.line_no}"
        assert h.prompt == w.prompt + h.prefix and w.target == h.prefix + h.target
        assert h.target and "\n" not in h.target and w.prompt.endswith("\n")
        assert len(w.prompt.encode()) <= task.PROMPT_MAX_BYTES and len(w.target.encode()) <= task.TARGET_MAX_BYTES
        assert w.prompt.count("\n") >= 2


def test_training_and_held_out_files_are_disjoint() -> None:
    train = set(task.train_files())
    assert not train & set(task.eval_files()) and len(task.eval_files()) == len(task.HELD_OUT_FILES)
    assert len(train) > 100


LINE = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=200)
@given(target=LINE, generated=st.text(max_size=30) | LINE.map(lambda s: s + "\n"))
def test_scores_are_consistent(target: str, generated: str) -> None:
    """Scores lie in [0, 1]; exact = 1 iff soft = 1 iff the first generated line is the target line; then similarity = 1."""
    item = {"target": target}
    scores = task.score_details(item, generated)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    right = task.completion_line(generated) == (target + "\n").encode()
    assert (scores["exact"] == 1.0) == right == (scores["soft"] == 1.0)
    if right:
        assert scores["similarity"] == 1.0
    assert task.score_details(item, target + "\nanything") == {"exact": 1.0, "soft": 1.0, "similarity": 1.0}


def test_importing_the_demo_imports_no_torch() -> None:
    code = "import sys, ead_sdk.demo, ead_sdk.demo.task, ead_sdk.demo.tokenizer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert Path(default_traces_path()).is_relative_to(demo_dir())
