"""Recording at scale: one stream per worker, and compaction of the shards into one dataset."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk.errors import TraceError
from ead_sdk.simulators import synthetic_traces
from ead_sdk.traces import ShardedTraceWriter, TraceWarning, compact, read_meta, read_traces
from ead_sdk.traces.shards import default_shard_id, merge_meta


def rows_by_id(traces) -> dict[int, dict]:
    return {row["sequence_id"]: row for row in traces.table.to_pylist()}


@settings(max_examples=15)
@given(
    assignment=st.lists(st.integers(0, 3), min_size=1, max_size=14),
    batch_rows=st.integers(1, 5),
    rows_per_file=st.integers(1, 9),
)
def test_any_split_over_workers_compacts_to_the_same_sequences(tmp_path_factory, assignment, batch_rows, rows_per_file):
    """Property: however the sequences are spread over worker shards (and batched within each),
    the compacted dataset holds exactly the recorded sequences, once each, with the trace's
    metadata."""
    traces = synthetic_traces(len(assignment), (0, 12), seed=len(assignment))
    root = tmp_path_factory.mktemp("rec")
    writers = {
        w: ShardedTraceWriter(root / "shards", traces.meta, shard=f"w{w}", batch_rows=batch_rows)
        for w in sorted(set(assignment))
    }
    for seq, w in zip(traces.sequences(), assignment, strict=True):
        writers[w].write(seq)
    for writer in writers.values():
        writer.close()
    out = compact(root / "shards", root / "ds", rows_per_file=rows_per_file)
    merged = read_traces(out)
    assert merged.meta == traces.meta
    assert rows_by_id(merged) == rows_by_id(traces)


def test_shards_from_different_model_pairs_or_tokenizers_are_refused(tmp_path):
    base = synthetic_traces(3, 5, seed=0)
    other_models = synthetic_traces(3, 5, seed=0, param_counts=(10**9, 3 * 10**9))
    with ShardedTraceWriter(tmp_path / "a", base.meta, shard="one") as w:
        w.write_many(base.sequences())
    with ShardedTraceWriter(tmp_path / "a", other_models.meta, shard="two") as w:
        w.write_many(other_models.sequences())
    with pytest.raises(TraceError, match=r"shard-two.arrows: metadata differs .*param_counts .*different model pair"):
        compact(tmp_path / "a", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    foreign = type(base.meta)(**{**base.meta.__dict__, "tokenizer_fingerprint": "sha256:other"})
    with pytest.raises(TraceError, match="tokenizer_fingerprint .*different tokenizer"):
        merge_meta([base.meta, foreign], ["a", "b"])


def test_generation_settings_that_differ_are_kept_per_shard(tmp_path):
    base = synthetic_traces(2, 4, seed=0)
    for i in range(2):
        meta = base.meta.with_generation(worker_seed=i, temperature=0.7)
        with ShardedTraceWriter(tmp_path / "rec", meta, shard=f"w{i}") as w:
            w.write_many(base.sequences())
    meta = read_meta(compact(tmp_path / "rec", tmp_path / "ds"))
    assert meta.generation["temperature"] == 0.7 and "worker_seed" not in meta.generation
    assert meta.generation["shards"] == [
        {"source": "shard-w0.arrows", "worker_seed": 0},
        {"source": "shard-w1.arrows", "worker_seed": 1},
    ]
    assert meta.model_names == base.meta.model_names


def test_a_crashed_worker_keeps_its_complete_batches(tmp_path):
    traces = synthetic_traces(6, 8, seed=1)
    seqs = traces.sequences()
    with ShardedTraceWriter(tmp_path / "rec", traces.meta, shard="ok") as w:
        w.write_many(seqs[:3])
    crashed = ShardedTraceWriter(tmp_path / "rec", traces.meta, shard="crashed", batch_rows=1)
    crashed.write_many(seqs[3:])  # flushed batch by batch, never closed: no end-of-stream marker
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compact(tmp_path / "rec", tmp_path / "ds")
    assert any(issubclass(w.category, TraceWarning) and "not closed" in str(w.message) for w in caught)
    assert sorted(rows_by_id(read_traces(out))) == list(range(6))
    crashed.close()


def test_shard_ids(tmp_path):
    assert default_shard_id() != default_shard_id()
    meta = synthetic_traces(1, 2).meta
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(TraceError, match="shard id"):
            ShardedTraceWriter("/tmp/never-created", meta, shard=bad)
    assert ShardedTraceWriter.shards(tmp_path / "nonexistent") == []
    for name in ("shard-b.arrows", "shard-a.arrows", "notes.txt", "shard-c.parquet", "other.arrows"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "shard-d.arrows").mkdir()
    assert ShardedTraceWriter.shards(tmp_path) == [tmp_path / "shard-a.arrows", tmp_path / "shard-b.arrows"]
