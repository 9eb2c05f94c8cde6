"""Fuzzing the trace reader: truncated and corrupted copies of valid traces.

Every read of a damaged copy gives the original sequences, or (for a stream, with ``recover`` or
with a "not closed" warning) a prefix of whole batches of them, or an SDK error. Never a raw
library exception, never altered data.
"""

from __future__ import annotations

import tempfile
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk.errors import EadError
from ead_sdk.traces import TraceMeta, TraceSet, TraceWarning, TraceWriter, read_meta, read_traces, write_traces
from tests.test_traces import make_meta, make_sequence

FORMS = ("stream", "parquet", "ipc-file")


@cache
def original() -> tuple[TraceMeta, pa.Table, dict[str, bytes]]:
    """A valid trace (6 sequences in 3 batches or row groups) and its bytes in every storage form."""
    meta = make_meta(m=2, k=2, vocab=50)
    rng = np.random.default_rng(11)
    seqs = [make_sequence(rng, meta, 3 + i, i) for i in range(6)]
    table = TraceSet.from_sequences(meta, seqs).table
    data = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with TraceWriter(root / "t.arrows", meta, batch_rows=2) as w:
            w.write_many(seqs)
        data["stream"] = (root / "t.arrows").read_bytes()
        write_traces(TraceSet(meta, table), root / "t.parquet", row_group_rows=2)
        data["parquet"] = (root / "t.parquet").read_bytes()
        write_traces(TraceSet(meta, table), root / "t.ipc", format="ipc", row_group_rows=2)
        data["ipc-file"] = (root / "t.ipc").read_bytes()
    return meta, table, data


def check_read(form: str, damaged: bytes, recover: bool) -> None:
    meta, table, _ = original()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / {"stream": "d.arrows", "parquet": "d.parquet", "ipc-file": "d.ipc"}[form]
        path.write_bytes(damaged)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TraceWarning)
            try:
                got = read_traces(path, recover=recover)
                got_meta = read_meta(path)
            except EadError:
                return  # a named SDK error: the damage was noticed
        notes = " ".join(str(w.message) for w in caught if issubclass(w.category, TraceWarning))
    assert got.meta == meta and got_meta == meta, "the metadata was altered"
    whole = got.table.num_rows == table.num_rows
    if not whole:
        assert form == "stream", f"a damaged {form} read as {got.table.num_rows} of {table.num_rows} sequences"
        assert recover or "not closed" in notes, "a prefix read without recover and without a warning"
        assert got.table.num_rows % 2 == 0, "a batch was split"
    assert got.table.equals(table.slice(0, got.table.num_rows).cast(got.table.schema)), "the data were altered"


def test_the_undamaged_copies_read_back_exactly() -> None:
    _, _, data = original()
    for form in FORMS:
        check_read(form, data[form], recover=False)


@settings(max_examples=150)
@given(form=st.sampled_from(FORMS), cut=st.floats(0.0, 1.0, exclude_max=True), recover=st.booleans())
def test_truncation(form: str, cut: float, recover: bool) -> None:
    data = original()[2][form]
    check_read(form, data[: int(cut * len(data))], recover)


@settings(max_examples=300)
@given(
    form=st.sampled_from(FORMS),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3),
    recover=st.booleans(),
)
def test_corruption(form: str, flips: list[tuple[float, int]], recover: bool) -> None:
    damaged = bytearray(original()[2][form])
    for where, xor in flips:
        damaged[int(where * len(damaged))] ^= xor
    check_read(form, bytes(damaged), recover)


def test_a_corrupted_parquet_file_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """Before: the decompressor's raw OSError (a traceback from the API and the CLI)."""
    import subprocess
    import sys

    data = bytearray(original()[2]["parquet"])
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0x5A
    path = tmp_path / "bad.parquet"
    path.write_bytes(bytes(data))
    try:
        read_traces(path)
    except EadError as exc:
        assert str(path) in str(exc)
    else:
        raise AssertionError("the damage went unnoticed")
    out = subprocess.run(
        [sys.executable, "-m", "ead_sdk.cli", "replay", str(path), "--policy", "fixed"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("ead replay: error: ") and len(out.stderr.strip().splitlines()) == 1


def test_replay_recover_reads_a_cut_stream(tmp_path: Path) -> None:
    """The reader's message pointed to recover=True; the CLI had no --recover."""
    import subprocess
    import sys

    data = original()[2]["stream"]
    path = tmp_path / "cut.arrows"
    path.write_bytes(data[: len(data) - 100])
    base = [sys.executable, "-m", "ead_sdk.cli", "replay", str(path), "--policy", "fixed", "--json"]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "--recover" in plain.stderr
    kept = subprocess.run([*base, "--recover"], capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0, kept.stderr
    assert "ead replay: warning: " in kept.stderr and "4 sequences" in kept.stderr
    assert '"sequences": 4' in kept.stdout
