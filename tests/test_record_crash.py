"""A real ``ead record`` process killed mid-run keeps every sequence it had finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ead_sdk.traces import TraceWarning, read_traces  # noqa: E402

PROMPTS = 400  # far more than finish before the kill: the run is always stopped mid-way


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"def f{i}(x):\n" for i in range(PROMPTS)), encoding="utf-8")
    out = tmp_path / "o.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ead_sdk.cli", "record", "--prompts", str(prompts), "--out", str(out)]
    cmd += ["--batch", "2", "--max-new-tokens", "24", "--k", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, out


def _wait_for_sequences(proc: subprocess.Popen, stream: Path, at_least: int) -> int:
    """Poll the recording stream until it holds ``at_least`` sequences (read as a crash would leave it)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if stream.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TraceWarning)
                try:
                    n = len(read_traces(stream, recover=True))
                except Exception:  # the schema itself may not be complete yet
                    n = 0
            if n >= at_least:
                return n
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the recording produced no sequences in time")


def _check_prefix(traces, seen: int) -> None:
    ids = sorted(s.fields["sequence_id"] for s in traces.sequences())
    assert len(ids) >= seen
    assert len(ids) < PROMPTS, "the run was meant to be stopped mid-way"
    assert len(set(ids)) == len(ids)
    for seq in traces.sequences():
        assert len(seq.token_ids) >= 1
        assert seq.entropy.shape == (len(seq.token_ids), 2)


def test_sigkill_keeps_finished_sequences_recoverable(tmp_path: Path) -> None:
    """After kill -9 the stream next to --out holds every finished sequence; `ead traces recover` writes them."""
    proc, out = _start(tmp_path)
    stream = out.with_name(out.name + ".arrows")
    seen = _wait_for_sequences(proc, stream, 6)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not out.exists()
    recovered = tmp_path / "rec.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "ead_sdk.cli", "traces", "recover", str(stream), "--out", str(recovered)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "recovered" in done.stdout and str(recovered) in done.stdout.replace("\n", "")
    _check_prefix(read_traces(recovered), seen)
    # The stream left behind makes a new run to the same --out refuse, naming the stream.
    again = subprocess.run(
        [sys.executable, "-m", "ead_sdk.cli", "record", "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1
    assert "o.parquet.arrows exists" in " ".join(again.stderr.split()) and "Traceback" not in again.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_finished_sequences_and_says_where(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) mid-run writes what finished to --out, says so, and removes the stream."""
    proc, out = _start(tmp_path)
    stream = out.with_name(out.name + ".arrows")
    seen = _wait_for_sequences(proc, stream, 4)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert f"stopped by {sig.name}" in err and str(out) in err
    assert "Traceback" not in err
    traces = read_traces(out)
    _check_prefix(traces, seen)
    assert not stream.exists()
