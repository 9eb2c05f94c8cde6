"""Bad policies, prompts and models in the live loop and in replay: a named SDK error, never a raw one or a silent floor."""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ead_sdk import PolicyError
from ead_sdk.backend import Sampling
from ead_sdk.errors import BackendError, SignalError
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.simulators import replay
from ead_sdk.traces import TraceSet
from tests.test_traces import make_meta, make_sequence

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ead_sdk.backends.hf import TransformersBackend  # noqa: E402
from ead_sdk.backends.trace import TraceBackend  # noqa: E402
from ead_sdk.decode import generate  # noqa: E402
from tests.test_hf_backend import LARGE, SMALL, pair, tiny  # noqa: E402


class Bad(Policy):
    """A policy whose ``decide`` misbehaves in the way ``how`` names, from step 1 on."""

    name = "bad"

    def __init__(self, how: str, **kw: Any):
        super().__init__(**kw)
        self.how = how

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        return {"count": xp.zeros((n,), dtype=xp.int64)}

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = np if isinstance(step.entropy, np.ndarray) else torch
        n = step.live.shape[0]
        late = int(step.index[0]) >= 1
        routes = xp.zeros((n,), dtype=xp.int64) if not isinstance(step.entropy, np.ndarray) else np.zeros(n, np.int64)
        new = {"count": state["count"] + 1}
        if not late:
            return routes, new
        if self.how == "raises":
            raise ZeroDivisionError("boom")
        if self.how == "sdk":
            raise SignalError("the step carries no top-k")
        if self.how == "drops":
            return routes, {}
        if self.how == "shape":
            return routes[:1], new
        if self.how == "float":
            return routes + 0.7, new
        if self.how == "nan":
            return routes * float("nan"), new
        if self.how == "rows":
            return routes, {"count": state["count"][:1]}
        raise AssertionError(self.how)


CASES = [
    ("raises", r"policy 'bad' at step 1: decide raised ZeroDivisionError: boom"),
    ("drops", r"policy 'bad' at step 1: the state must keep its keys: dropped \['count'\]"),
    ("shape", r"policy 'bad' at step 1: routes have shape \(1,\), expected \(3,\)"),
    ("float", r"policy 'bad' at step 1: routes must be model indices of an integer dtype, got .*float"),
    ("nan", r"policy 'bad' at step 1: routes must be model indices of an integer dtype"),
    ("rows", r"policy 'bad' at step 1: state 'count' must have 3 rows"),
]


@pytest.mark.parametrize(("how", "message"), CASES)
def test_generate_names_the_policy_and_the_step(how: str, message: str) -> None:
    """Before: a raw ZeroDivisionError/KeyError/torch error, or float routes floored (0.7 -> model 0)."""
    with pytest.raises(PolicyError, match=message):
        generate(pair(), Bad(how), [[5], [6, 7], [8]], max_new_tokens=4)


@pytest.mark.parametrize(("how", "message"), CASES)
def test_replay_names_the_policy_and_the_step(how: str, message: str) -> None:
    """Before: NaN routes raised a raw ValueError, float routes were floored."""
    meta = make_meta(m=2, k=2)
    rng = np.random.default_rng(0)
    traces = TraceSet.from_sequences(meta, [make_sequence(rng, meta, 5, i) for i in range(3)])
    with pytest.raises(PolicyError, match=message):
        replay(traces, Bad(how))


def test_an_sdk_error_from_decide_keeps_its_class_and_gains_the_step() -> None:
    with pytest.raises(SignalError, match=r"policy 'bad' at step 1: the step carries no top-k"):
        generate(pair(), Bad("sdk"), [[5], [6, 7], [8]], max_new_tokens=4)


def test_a_policy_error_in_the_trace_backend_loop_too() -> None:
    meta = make_meta(m=2, k=2)
    rng = np.random.default_rng(0)
    seqs = [make_sequence(rng, meta, 5, i) for i in range(3)]
    seqs = [dataclasses.replace(s, prompt_ids=np.array([1, 2], np.int32)) for s in seqs]
    traces = TraceSet.from_sequences(meta, seqs)
    with pytest.raises(PolicyError, match="routes must be model indices of an integer dtype"):
        generate(TraceBackend(traces), Bad("float"))


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([5.7, 6.2], r"prompt 0, position 0: token ids must be integers, got float 5.7"),
        ([5, True], r"prompt 0, position 1: token ids must be integers, got bool True"),
        (np.array([5.0, 6.0]), r"prompt 0: token ids must be integers, got an array of float64"),
        (np.array([True]), r"prompt 0: token ids must be integers, got an array of bool"),
        ([2**70], r"prompt 0 has token id 1180591620717411303424 outside the vocabulary"),
        ([[5, 6]], r"prompt 0, position 0: token ids must be integers, got list"),
    ],
)
def test_prompt_ids_must_be_integers(prompt: Any, message: str) -> None:
    """Before: floats were floored ([5.7, 6.2] -> [5, 6]), booleans taken as 0/1, 2**70 an OverflowError."""
    with pytest.raises(BackendError, match=message):
        generate(pair(), FixedPolicy(), [prompt], max_new_tokens=2)


def test_integer_arrays_and_tensors_are_prompts() -> None:
    a = generate(pair(), FixedPolicy(), [[5, 6]], max_new_tokens=3)
    b = generate(pair(), FixedPolicy(), [np.array([5, 6], np.int32)], max_new_tokens=3)
    c = generate(pair(), FixedPolicy(), [torch.tensor([5, 6])], max_new_tokens=3)
    assert a[0].tokens == b[0].tokens == c[0].tokens


def test_max_new_tokens_is_bounded_before_anything_is_allocated() -> None:
    """Before: 10**12 tried to allocate 7 TiB (MemoryError)."""
    with pytest.raises(BackendError, match=r"max_new_tokens must be an integer in \[1, 1048576\], got 1000000000000"):
        generate(pair(), FixedPolicy(), [[5]], max_new_tokens=10**12)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_sampling_over_non_finite_logits_is_a_backend_error(value: float) -> None:
    """Before: torch.multinomial's own RuntimeError; greedy decoding already named model, lane and position."""
    broken = tiny(2, 32, seed=5)
    with torch.no_grad():
        broken.lm_head.weight[7, 0] = value
        broken.lm_head.bias = None
    backend = TransformersBackend([SMALL, broken], eos_token_id=[])
    with pytest.raises(BackendError, match=r"model 1 .* non-finite logits .* lane \d at generated position 0"):
        generate(
            backend, FixedPolicy(model=1), [[5, 6], [7]], max_new_tokens=3, sampling=Sampling(do_sample=True, seed=1)
        )


def test_a_pickled_checkpoint_is_a_backend_error(tmp_path: Path) -> None:
    """A model folder with a pickled (non-weights) checkpoint: torch's weights_only refuses it; we say so in one line."""
    folder = tmp_path / "m"
    LARGE.config.save_pretrained(folder)

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("unpickled!",))

    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"x": Payload()}, fh)
    with pytest.raises(BackendError, match=r"model 1: cannot load .* from local files \(\w*UnpicklingError"):
        TransformersBackend([SMALL, str(folder)])


def test_differing_vocabularies_without_a_tokenizer_are_warned_naming_both_sizes() -> None:
    """Before: vocabularies of 64 and 100 ran at 64 and dropped the larger model's extra logits silently."""
    small, large = tiny(1, 16, vocab=64, seed=1), tiny(2, 32, vocab=100, seed=3)
    with pytest.warns(UserWarning, match=r"vocabularies differ \(.*: 64, .*: 100\).*first 64 ids"):
        backend = TransformersBackend([small, large])
    assert backend.vocab_size == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TransformersBackend([SMALL, LARGE])  # equal vocabularies: no warning


@pytest.mark.parametrize("seed", [2**70, -1, "x", True])
def test_a_seed_out_of_range_is_named(seed: Any) -> None:
    """Found while looking for more of the kind: torch's OverflowError/ValueError on a huge or odd seed."""
    with pytest.raises(BackendError, match=r"sampling: seed must be None or an integer in \[0, 2\*\*63\)"):
        Sampling(do_sample=True, seed=seed)


def test_a_stop_id_out_of_range_is_named() -> None:
    """Found while looking for more of the kind: an OverflowError building the stop-id array."""
    with pytest.raises(BackendError, match=r"stop entries must be non-empty strings or token ids"):
        generate(pair(), FixedPolicy(), [[5]], max_new_tokens=2, stop=[2**70])


def test_prompt_files_that_are_not_text_or_too_deep_are_named(tmp_path: Path) -> None:
    from ead_sdk.cli.model_commands import read_prompts
    from ead_sdk.errors import UserError

    binary = tmp_path / "p.txt"
    binary.write_bytes(b"\xff\xfe bad\n")
    with pytest.raises(UserError, match=r"p.txt: not UTF-8 text"):
        read_prompts(binary)
    deep = tmp_path / "p.jsonl"
    deep.write_text("[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"p.jsonl:1: not valid JSON \(nested more than"):
        read_prompts(deep)


class BadInit(Bad):
    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        if self.how == "raises":
            raise KeyError("missing")
        return {"count": np.zeros(n + 1, np.int64)}


@pytest.mark.parametrize(
    ("how", "message"),
    [("raises", r"policy 'bad' \(init_state\): raised KeyError"), ("rows", r"state 'count' must have 3 rows")],
)
def test_init_state_bugs_name_the_policy(how: str, message: str) -> None:
    """Found while looking for more of the kind: a policy's init_state failing gave a raw error."""
    with pytest.raises(PolicyError, match=message):
        generate(pair(), BadInit(how), [[5], [6, 7], [8]], max_new_tokens=4)
    meta = make_meta(m=2, k=2)
    rng = np.random.default_rng(0)
    traces = TraceSet.from_sequences(meta, [make_sequence(rng, meta, 5, i) for i in range(3)])
    with pytest.raises(PolicyError, match=message):
        replay(traces, BadInit(how))
