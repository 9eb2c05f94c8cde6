"""TraceRecorder, driven the way vLLM's worker drives a logits processor (tests/vllm_toy_batch.py).

The recorded rows are checked against a float64 reference computed from the very logits each
step saw; the processor's calls run under `forbid_host_sync` (no value read on the host on the
step's thread); a process killed with SIGKILL keeps every row it had written. The same recorder
inside a real vLLM engine is tested in tests/test_vllm_engine.py.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from vllm_toy_batch import ToyRequest, ToyWorker, fake_vllm_config  # noqa: E402

from ead_sdk.backends.vllm_recording import RecordingOptions, TraceRecorder  # noqa: E402
from ead_sdk.integrations.host_sync import forbid_host_sync  # noqa: E402
from ead_sdk.traces import TraceWarning, read_traces  # noqa: E402

K = 3
HERE = Path(__file__).resolve().parent


def recorder(tmp_path: Path, **options) -> TraceRecorder:
    opts = RecordingOptions(
        str(tmp_path), k=K, model_name="toy", num_params=1000, tokenizer_fingerprint="toy", **options
    )
    return TraceRecorder(fake_vllm_config(opts), torch.device("cpu"), False)


def opt_in(number: int) -> dict:
    return RecordingOptions.request_args(sequence_id=number)


def reference(request: ToyRequest, tokens: list[int]) -> dict[str, np.ndarray]:
    """Entropy, token log-prob and top-k of each position, in float64 from the logits that step saw."""
    rows = np.stack([request.seen[p] for p in range(len(tokens))]).astype(np.float64)
    logp = (
        rows - np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1, keepdims=True)) - rows.max(-1, keepdims=True)
    )
    order = np.argsort(-logp, axis=-1, kind="stable")[:, :K]
    return {
        "entropy": -(np.exp(logp) * logp).sum(-1),
        "token_logprob": logp[np.arange(len(tokens)), tokens],
        "top_ids": order,
        "top_logprobs": np.take_along_axis(logp, order, -1),
    }


def rows_by_id(directory: Path) -> dict:
    (stream,) = directory.glob("*.arrows")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceWarning)
        traces = read_traces(stream, recover=True)
    return {s.fields["sequence_id"]: s for s in traces.sequences()}


def serve(worker: ToyWorker, requests: list[ToyRequest], steps: int = 200) -> None:
    for r in requests:
        worker.submit(r)
    for _ in range(steps):
        if len(worker.ended) == len(requests):
            break
        worker.step()
    worker.step()  # vLLM tells the processors about the last removals in one more (empty) step


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_rows_are_exact_and_one_per_ended_request(tmp_path, greedy):
    rec = recorder(tmp_path, flush_steps=4)
    worker = ToyWorker(rec, seed=3, greedy=greedy, guard=forbid_host_sync)
    requests = [
        ToyRequest(0, [1, 2], 7, opt_in(0)),
        ToyRequest(1, [3], 12, opt_in(1), partial_steps=2),  # a chunked prefill: two draws discarded
        ToyRequest(2, [4, 5, 6], 5, None),  # did not opt in
        ToyRequest(3, [7], 9, opt_in(3), abort_after=4),  # the client went away
        ToyRequest(4, [8, 9], 10, opt_in(4)),
        ToyRequest(5, [1], 1, opt_in(5)),  # a single token
    ]
    for r in requests[:3]:
        worker.submit(r)
    worker.run(3)
    worker.pause(0)  # the scheduler skips request 0 for a while; vLLM keeps its state
    worker.run(2)
    assert 0 not in rows_by_id_or_empty(tmp_path), "a paused request is not an ended one"
    worker.resume(0)
    serve(worker, requests[3:])
    rec.close()
    rows = rows_by_id(tmp_path)
    assert sorted(rows) == [0, 1, 3, 4, 5]
    for r in requests:
        if r.number not in rows:
            continue
        seq = rows[r.number]
        tokens = seq.token_ids.tolist()
        assert len(tokens) == (r.abort_after or r.length) and seq.prompt_ids.tolist() == r.prompt
        want = reference(r, tokens)
        np.testing.assert_allclose(seq.entropy[:, 0], want["entropy"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(seq.token_logprob[:, 0], want["token_logprob"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(seq.top_ids[:, 0], want["top_ids"])
        np.testing.assert_allclose(seq.top_logprobs[:, 0], want["top_logprobs"], rtol=1e-5, atol=1e-5)
        if greedy:
            assert tokens == [int(np.argmax(r.seen[p])) for p in range(len(tokens))]


def rows_by_id_or_empty(directory: Path) -> dict:
    return rows_by_id(directory) if list(directory.glob("*.arrows")) else {}


def test_values_reach_the_host_in_batches_not_per_step(tmp_path):
    rec = recorder(tmp_path, flush_steps=8)
    submits = []
    real = rec.host.submit
    rec.host.submit = lambda tensors, meta: (submits.append(len(meta.step_uids)), real(tensors, meta))
    worker = ToyWorker(rec, guard=forbid_host_sync)
    serve(worker, [ToyRequest(0, [1], 30, opt_in(0))])
    rec.close()
    assert len(rows_by_id(tmp_path)[0].token_ids) == 30
    # 31 steps: one copy every 8 steps, one when the request ended
    assert len(submits) <= math.ceil(31 / 8) + 1, submits
    assert sum(submits) == 30


def test_bad_opt_in_and_options_are_refused(tmp_path):
    from types import SimpleNamespace

    for bad in ("yes", 3, {"x": object()}):
        with pytest.raises(ValueError, match="ead_sdk.record"):
            TraceRecorder.validate_params(SimpleNamespace(extra_args={"ead_sdk.record": bad}))
    TraceRecorder.validate_params(SimpleNamespace(extra_args=None))  # not opted in: fine
    config = fake_vllm_config(RecordingOptions(str(tmp_path), num_params=10, tokenizer_fingerprint="t"))
    config.additional_config = {}
    with pytest.raises(ValueError, match="additional_config"):
        TraceRecorder(config, torch.device("cpu"), False)
    config = fake_vllm_config(RecordingOptions(str(tmp_path), num_params=10, tokenizer_fingerprint="t"))
    config.scheduler_config.async_scheduling = True
    with pytest.raises(ValueError, match="async_scheduling"):
        TraceRecorder(config, torch.device("cpu"), False)
    with pytest.raises(ValueError, match="batch_rows"):
        RecordingOptions(str(tmp_path), batch_rows=0)


def test_a_killed_process_keeps_every_row_it_wrote(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, str(HERE / "vllm_toy_batch.py"), str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    written = 0
    try:
        deadline = time.monotonic() + 120
        while written < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            written = int(line.split()[1])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert written >= 5
    rows = rows_by_id(tmp_path)
    assert len(rows) >= written  # every row reported on disk survived the kill
    for number, seq in rows.items():
        assert len(seq.token_ids) == 4 + number % 5  # whole rows only
