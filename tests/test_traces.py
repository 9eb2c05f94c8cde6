"""Trace record: round trips through every storage path, batching, flat views, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk.errors import TraceError
from ead_sdk.traces import (
    SequenceTrace,
    TraceMeta,
    TraceSet,
    TraceWarning,
    TraceWriter,
    compact,
    iter_trace_batches,
    read_meta,
    read_traces,
    trace_schema,
    validate_sequence,
    write_traces,
)


def make_meta(m: int = 2, k: int = 3, vocab: int = 50) -> TraceMeta:
    return TraceMeta(
        1,
        tuple(f"m{i}" for i in range(m)),
        tuple(10**i for i in range(1, m + 1)),
        vocab,
        "fp",
        k,
        {"max_new_tokens": 8},
    )


def make_sequence(rng: np.random.Generator, meta: TraceMeta, length: int, sid: int | None = None) -> SequenceTrace:
    m, k, v = meta.num_models, meta.k, meta.vocab_size
    top = None
    top_lp = None
    if k:
        top = rng.integers(0, v, (length, m, k))
        top_lp = -np.sort(rng.exponential(size=(length, m, k)), axis=-1)
    fields: dict = {}
    if sid is not None:
        fields = {
            "sequence_id": sid,
            "prompt_id": f"p{sid}",
            "correct": tuple(bool(b) for b in rng.integers(0, 2, m)),
            "note": {"a": [1, 2]},
        }
    return SequenceTrace.build(
        prompt_ids=rng.integers(0, v, int(rng.integers(0, 4))),
        token_ids=rng.integers(0, v, length),
        emitted_by=rng.integers(0, m, length),
        entropy=rng.exponential(size=(length, m)),
        token_logprob=-rng.exponential(size=(length, m)),
        top_ids=top,
        top_logprobs=top_lp,
        fields=fields,
    )


def assert_same(a: SequenceTrace, b: SequenceTrace) -> None:
    for name in ("prompt_ids", "token_ids", "emitted_by", "entropy", "token_logprob", "top_ids", "top_logprobs"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        np.testing.assert_array_equal(x, y, err_msg=name)
        assert x.dtype == y.dtype, name
    assert a.fields == b.fields


traces_strategy = st.builds(
    lambda m, k, lengths, seed, labelled: (m, k, lengths, seed, labelled),
    st.integers(1, 3),
    st.integers(0, 3),
    st.lists(st.integers(0, 7), min_size=0, max_size=6),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)


def build(spec) -> tuple[TraceMeta, list[SequenceTrace]]:
    m, k, lengths, seed, labelled = spec
    meta = make_meta(m, k)
    rng = np.random.default_rng(seed)
    return meta, [make_sequence(rng, meta, t, i if labelled else None) for i, t in enumerate(lengths)]


@settings(max_examples=25)
@given(traces_strategy, st.sampled_from(["stream", "parquet", "ipc", "dataset"]), st.integers(1, 4))
def test_round_trip_every_storage_path(tmp_path_factory, spec, how, batch_rows):
    """Property: writing sequences by any path and reading them back gives equal sequences,
    metadata and order, and every batch read holds whole sequences."""
    meta, seqs = build(spec)
    d = tmp_path_factory.mktemp("rt")
    if how == "stream":
        path = d / "t.arrows"
        with TraceWriter(path, meta, batch_rows=batch_rows) as w:
            w.write_many(seqs)
    elif how == "dataset":
        src = d / "t.arrows"
        with TraceWriter(src, meta, batch_rows=batch_rows) as w:
            w.write_many(seqs)
        path = compact(src, d / "ds", rows_per_file=2, row_group_rows=1)
    else:
        path = write_traces(TraceSet.from_sequences(meta, seqs), d / f"t.{how}", format=how)
    assert read_meta(path) == meta
    got = read_traces(path)
    assert got.meta == meta and len(got) == len(seqs)
    for a, b in zip(seqs, got.sequences(), strict=True):
        assert_same(a, b)
    batches = list(iter_trace_batches(path, batch_rows=batch_rows))
    assert all(len(b) <= batch_rows for b in batches)
    flat_again = [s for b in batches for s in b.sequences()]
    assert len(flat_again) == len(seqs)
    for a, b in zip(seqs, flat_again, strict=True):
        assert_same(a, b)


@settings(max_examples=25)
@given(traces_strategy)
def test_flat_view_is_the_concatenation(spec):
    """Property: the flat view is every sequence's arrays concatenated, offsets are the cumulative
    lengths, and `padded` puts position t of sequence i at [t, i]."""
    meta, seqs = build(spec)
    ts = TraceSet.from_sequences(meta, seqs)
    two = TraceSet.concat([ts.take(range(len(ts) // 2)), ts.take(range(len(ts) // 2, len(ts)))])
    for traces in (ts, two):
        flat = traces.flat()
        assert flat.lengths.tolist() == [s.length for s in seqs]
        for name in ("token_ids", "entropy", "token_logprob", "top_ids"):
            parts = [getattr(s, name) for s in seqs]
            if parts and parts[0] is None or meta.k == 0 and name == "top_ids":
                assert getattr(flat, name) is None
                continue
            want = np.concatenate(parts) if parts else None
            if want is not None:
                np.testing.assert_array_equal(getattr(flat, name), want)
        if seqs and max(s.length for s in seqs) > 0:
            pad = flat.padded("entropy", fill=-1)
            for i, s in enumerate(seqs):
                np.testing.assert_array_equal(pad[: s.length, i], s.entropy)
                assert np.all(pad[s.length :, i] == -1)


def test_column_selection_reads_only_those_columns(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(1)
    seqs = [make_sequence(rng, meta, 5, i) for i in range(4)]
    path = write_traces(TraceSet.from_sequences(meta, seqs), tmp_path / "t.parquet")
    got = read_traces(path, columns=["entropy", "token_ids"])
    assert got.columns == ("entropy", "token_ids")
    flat = got.flat()
    assert flat.top_ids is None and flat.entropy.shape == (20, 2)
    with pytest.raises(TraceError, match="unknown trace column"):
        read_traces(path, columns=["entropies"])


def test_parquet_row_groups_become_batches(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(2)
    seqs = [make_sequence(rng, meta, int(t)) for t in rng.integers(1, 9, 10)]
    path = write_traces(TraceSet.from_sequences(meta, seqs), tmp_path / "t.parquet", row_group_rows=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    sizes = [len(b) for b in iter_trace_batches(path, batch_rows=3)]
    assert sum(sizes) == 10 and max(sizes) <= 3


# -- validation ---------------------------------------------------------------------------------


def _write_table(tmp_path: Path, table: pa.Table, name: str = "bad.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def _good_table(meta: TraceMeta | None = None, n: int = 3) -> tuple[TraceMeta, pa.Table]:
    meta = meta or make_meta()
    rng = np.random.default_rng(3)
    return meta, TraceSet.from_sequences(meta, [make_sequence(rng, meta, 4, i + 10) for i in range(n)]).table


def _with_meta(table: pa.Table, **changes) -> pa.Table:
    raw = json.loads(table.schema.metadata[b"ead_sdk.trace"])
    raw.update(changes)
    return table.replace_schema_metadata({b"ead_sdk.trace": json.dumps(raw).encode()})


def _set_values(table: pa.Table, column: str, row: int, index: int, value) -> pa.Table:
    """Overwrite flat value ``index`` of ``row`` in a list column (rebuilding it)."""
    seqs = TraceSet(read_meta_from(table), table).sequences()
    arr = getattr(seqs[row], column).copy()
    arr.reshape(-1)[index] = value
    seqs[row] = SequenceTrace(**{**seqs[row].__dict__, column: arr})
    return TraceSet.from_sequences(read_meta_from(table), seqs).table


def read_meta_from(table: pa.Table) -> TraceMeta:
    return TraceMeta.from_json(table.schema.metadata[b"ead_sdk.trace"])


def test_newer_and_unknown_format_versions_are_refused(tmp_path):
    _, table = _good_table()
    with pytest.raises(TraceError, match=r"bad.parquet: trace format version 99 is newer"):
        read_traces(_write_table(tmp_path, _with_meta(table, format_version=99)))
    with pytest.raises(TraceError, match=r"unknown trace format version 'x'"):
        read_traces(_write_table(tmp_path, _with_meta(table, format_version="x"), "b2.parquet"))


def test_not_a_trace_and_missing_columns(tmp_path):
    path = _write_table(tmp_path, pa.table({"a": [1]}), "plain.parquet")
    with pytest.raises(TraceError, match="plain.parquet: not an ead-sdk trace"):
        read_traces(path)
    _, table = _good_table()
    path = _write_table(tmp_path, table.drop_columns(["entropy"]))
    with pytest.raises(TraceError, match=r"bad.parquet: missing column\(s\) \['entropy'\]"):
        read_traces(path)


@pytest.mark.parametrize(
    ("column", "index", "value", "message"),
    [
        ("entropy", 5, np.nan, r"field 'entropy': position 2, model 1: entropy must be finite"),
        ("entropy", 0, -0.5, r"field 'entropy': position 0, model 0: entropy must be finite and >= 0"),
        ("token_ids", 3, 50, r"field 'token_ids': position 3: token id outside the vocabulary \[0, 50\)"),
        ("top_ids", 7, -1, r"field 'top_ids': position 1, model 0, rank 1: token id outside"),
        ("emitted_by", 1, 2, r"field 'emitted_by': position 1: model index outside \[0, 2\)"),
        ("token_logprob", 2, 0.5, r"field 'token_logprob': position 1, model 0: log-probability must be <= 0"),
        ("top_logprobs", 1, 0.0, r"field 'top_logprobs': position 0, model 0: top-k log-probabilities must be sorted"),
    ],
)
def test_bad_values_are_named_by_file_sequence_and_field(tmp_path, column, index, value, message):
    _, table = _good_table()
    bad = _set_values(table, column, 1, index, value)
    with pytest.raises(TraceError, match=r"bad.parquet: sequence 1 \(sequence_id 11\), " + message):
        read_traces(_write_table(tmp_path, bad))


def test_unequal_position_lengths_are_refused(tmp_path):
    meta, table = _good_table()
    col = table.column("emitted_by").combine_chunks()
    offsets = col.offsets.to_numpy().copy()
    values = col.values.to_numpy()
    offsets[2:] -= 1  # sequence 1 loses one position of emitted_by
    short = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.delete(values, 4)))
    bad = table.set_column(table.schema.get_field_index("emitted_by"), table.schema.field("emitted_by"), short)
    with pytest.raises(TraceError, match=r"field 'emitted_by': has 3 positions but 'token_ids' has 4"):
        read_traces(_write_table(tmp_path, bad))


def test_bad_sequences_are_refused_by_the_writer_without_losing_the_good_ones(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(4)
    good = make_sequence(rng, meta, 3, 1)
    bad = SequenceTrace(**{**good.__dict__, "entropy": np.full((3, 2), np.nan, np.float32)})
    wrong_shape = SequenceTrace(**{**good.__dict__, "entropy": np.zeros((3, 3), np.float32)})
    with TraceWriter(tmp_path / "w.arrows", meta, batch_rows=2) as w:
        w.write(good)
        with pytest.raises(TraceError, match=r"w.arrows: sequence 1 \(sequence_id 1\), field 'entropy'"):
            w.write(bad)
        with pytest.raises(TraceError, match=r"sequence 1: field 'entropy' has shape \(3, 3\), expected \(3, 2\)"):
            w.write(wrong_shape)
        w.write(good)
    assert len(read_traces(tmp_path / "w.arrows")) == 2
    with pytest.raises(TraceError, match="already exists"):
        TraceWriter(tmp_path / "w.arrows", meta)
    with pytest.raises(TraceError, match="field 'entropy'"):
        validate_sequence(meta, bad)


def test_truncated_stream_reports_what_is_recoverable(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(5)
    path = tmp_path / "t.arrows"
    with TraceWriter(path, meta, batch_rows=2) as w:
        w.write_many(make_sequence(rng, meta, 6, i) for i in range(6))
    data = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[: len(data) - 200])  # inside the third batch
    with pytest.raises(
        TraceError,
        match=r"cut.arrows: truncated or damaged inside batch 2; 2 complete batch\(es\) \(4 sequences\) are recoverable",
    ):
        read_traces(cut)
    with pytest.warns(TraceWarning, match="4 sequences"):
        got = read_traces(cut, recover=True)
    assert len(got) == 4
    head = tmp_path / "head.arrows"
    head.write_bytes(data[:3])
    with pytest.raises(TraceError, match="head.arrows: empty or truncated before the schema"):
        read_traces(head)


def test_compact_is_atomic_and_refuses_to_clobber(tmp_path):
    meta, table = _good_table()
    src = write_traces(TraceSet(meta, table), tmp_path / "a.arrow", format="ipc")
    out = compact([src, src], tmp_path / "ds", rows_per_file=4)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(read_traces(out)) == 6
    with pytest.raises(TraceError, match="already exists"):
        compact(src, out)
    compact(src, out, overwrite=True)
    assert len(read_traces(out)) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    other = write_traces(TraceSet(make_meta(k=2), _good_table(make_meta(k=2))[1]), tmp_path / "b.arrow", format="ipc")
    with pytest.raises(TraceError, match="metadata differs"):
        compact([src, other], tmp_path / "ds2")
    assert not (tmp_path / "ds2").exists()


def test_schema_metadata_is_json_and_the_package_never_pickles():
    meta = make_meta()
    raw = trace_schema(meta).metadata[b"ead_sdk.trace"]
    assert TraceMeta.from_json(raw) == meta and json.loads(raw)["format_version"] == 1
    root = Path(__file__).resolve().parents[1]
    for folder in ("ead_sdk/traces", "simulators"):
        for f in (root / folder).glob("*.py"):
            assert "pickle" not in f.read_text(), f


@pytest.mark.parametrize("how", ["parquet", "ipc"])
def test_written_traces_are_as_readable_as_plain_files(tmp_path, how):
    """Atomic publication keeps the umask's mode (mkstemp alone would leave 0600)."""
    import os

    meta = make_meta()
    seqs = [make_sequence(np.random.default_rng(2), meta, 4, 0)]
    old = os.umask(0o022)
    try:
        path = write_traces(TraceSet.from_sequences(meta, seqs), tmp_path / f"t.{how}", format=how)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
