"""A recording process killed with SIGKILL keeps every batch it completed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ead_sdk.traces import TraceWarning, read_traces

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from ead_sdk.traces import SequenceTrace, TraceMeta, TraceWriter

    meta = TraceMeta(1, ("s", "l"), (1, 10), 100, "fp", 2, {})
    rng = np.random.default_rng(0)
    w = TraceWriter(sys.argv[1], meta, batch_rows=2)
    for i in range(1000):
        t = 5
        w.write(SequenceTrace.build(
            prompt_ids=[1, 2], token_ids=rng.integers(0, 100, t), emitted_by=np.zeros(t),
            entropy=rng.random((t, 2)), token_logprob=-rng.random((t, 2)),
            top_ids=rng.integers(0, 100, (t, 2, 2)), top_logprobs=np.tile([-0.1, -2.0], (t, 2, 1)),
            fields={"sequence_id": i},
        ))
        if w.batches_written == 3 and i % 2 == 1:
            print("flushed", w.rows_written, flush=True)
            w.write(SequenceTrace.build(  # buffered, never flushed: lost by the kill
                prompt_ids=[1], token_ids=[1], emitted_by=[0], entropy=[[0.1, 0.1]],
                token_logprob=[[-1.0, -1.0]], top_ids=[[[1, 2], [1, 2]]],
                top_logprobs=[[[-0.1, -2.0], [-0.1, -2.0]]], fields={"sequence_id": -1},
            ))
            time.sleep(60)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_keeps_every_complete_batch(tmp_path):
    path = tmp_path / "rec.arrows"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "flushed 6", line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with pytest.warns(TraceWarning, match="not closed"):
        got = read_traces(path)
    assert [s.fields["sequence_id"] for s in got] == list(range(6))
    assert all(np.all(np.isfinite(s.entropy)) for s in got)
