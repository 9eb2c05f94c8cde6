"""Scale-out replay: a 64-configuration sweep over 10 million synthetic tokens, local vs Ray Data.

Writes (once, cached) a synthetic Parquet trace dataset of 10,000 sequences x 1,000 tokens in
20 files, then, in one run:

1. the local engine: `sweep(path, engine=LocalEngine())`, streaming batches of sequences in this process;
2. the Ray engine: `sweep(path, engine=RayEngine())` on a local Ray instance with ``--cpus`` CPUs;
3. checks the two tables are identical (every figure, no tolerance);
4. Ray's per-task overhead: a trivial ``map_batches`` over N blocks (the time per task, with the
   block count far above the CPU count), and a read-only pass over the trace's columns;
5. per-worker throughput: the worker kernel (`sweep_totals`) timed on one batch in this process.

Prints, last: ``local_s=<s> ray_s=<s> ray_vs_local=<x> per_worker_decisions_per_s=<r>
ray_task_overhead_ms=<ms> identical=<bool>``.

    python benchmarks/replay_scale.py [--sequences 10000] [--tokens 1000] [--cpus 2] [--batch-rows 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from ead_sdk import load_policy  # noqa: E402
from ead_sdk.simulators import LocalEngine, RayEngine, sweep, sweep_totals, synthetic_traces  # noqa: E402
from ead_sdk.simulators.replay import ReplayData  # noqa: E402
from ead_sdk.simulators.sweep import expand_grid, replay_columns  # noqa: E402
from ead_sdk.traces import TraceSet, iter_trace_batches, read_meta, write_traces  # noqa: E402

GRID = {"window": list(range(1, 9)), "threshold": [float(t) for t in np.linspace(0.4, 2.2, 8)], "unit": ["nats"]}


def build_dataset(path: Path, sequences: int, tokens: int, files: int) -> Path:
    """The synthetic trace as ``files`` Parquet files with one shared metadata (cached)."""
    marker = path / f".built-{sequences}x{tokens}x{files}"
    if marker.exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.parquet"):
        old.unlink()
    per_file = -(-sequences // files)
    meta = None
    t0 = time.perf_counter()
    for i in range(files):
        n = min(per_file, sequences - i * per_file)
        if n <= 0:
            break
        part = synthetic_traces(n, tokens, k=4, seed=1000 + i)
        if meta is None:
            meta = part.meta.with_generation(synthetic={"seeds": f"1000..{1000 + files - 1}", "files": files})
        table = part.table.set_column(
            part.table.schema.get_field_index("sequence_id"), "sequence_id", pa.array(np.arange(n) + i * per_file)
        )
        write_traces(TraceSet(meta, table), path / f"part-{i:05d}.parquet", row_group_rows=250)
    marker.touch()
    print(f"wrote {sequences} x {tokens} tokens in {files} files to {path} in {time.perf_counter() - t0:.1f} s")
    return path


def ray_overhead(ray, blocks: int) -> tuple[float, float]:
    """Wall time of a trivial map_batches over ``blocks`` one-row blocks: (total s, ms per task)."""
    import ray.data

    ds = ray.data.range(blocks, override_num_blocks=blocks)
    ds.map_batches(lambda b: b, batch_size=None).materialize()  # warm the workers
    t0 = time.perf_counter()
    ds.map_batches(lambda b: b, batch_size=None).materialize()
    wall = time.perf_counter() - t0
    return wall, 1000.0 * wall / blocks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=10_000)
    ap.add_argument("--tokens", type=int, default=1_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--batch-rows", type=int, default=500)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--data", default="/tmp/ead_replay_scale")
    ap.add_argument("--overhead-blocks", type=int, default=200)
    args = ap.parse_args()

    path = build_dataset(Path(args.data), args.sequences, args.tokens, args.files)
    configs = expand_grid(GRID)
    decisions = len(configs) * args.sequences * args.tokens
    print(
        f"trace: {args.sequences} sequences x {args.tokens} tokens = {args.sequences * args.tokens / 1e6:.0f}M "
        f"tokens, 2 models, k=4; grid: {len(configs)} rolling_entropy configurations "
        f"({decisions / 1e6:.0f}M decisions); batches of {args.batch_rows} sequences"
    )

    # Per-worker throughput: the worker's kernel on one batch, in this process.
    meta = read_meta(path)
    batch = next(iter_trace_batches(path, replay_columns(meta, False), batch_rows=args.batch_rows))
    t0 = time.perf_counter()
    data = ReplayData.from_traces(batch, with_topk=False)
    sweep_totals(data, load_policy("rolling_entropy"), configs, with_topk=False)
    kernel_s = time.perf_counter() - t0
    per_worker = len(configs) * batch.num_tokens / kernel_s
    print(
        f"worker kernel on one batch ({len(batch)} sequences, {len(configs)} configs): {kernel_s:.2f} s "
        f"-> {per_worker / 1e6:.1f}M decisions/s per worker"
    )

    t0 = time.perf_counter()
    local = sweep(path, "rolling_entropy", GRID, with_topk=False, engine=LocalEngine(batch_rows=args.batch_rows))
    local_s = time.perf_counter() - t0
    print(f"local engine (1 process, streamed): {local_s:.1f} s -> {decisions / local_s / 1e6:.1f}M decisions/s")

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_s = time.perf_counter() - t0
    wall, per_task_ms = ray_overhead(ray, args.overhead_blocks)
    print(
        f"ray.init: {init_s:.1f} s; trivial map_batches over {args.overhead_blocks} blocks on {args.cpus} CPUs: "
        f"{wall:.2f} s -> {per_task_ms:.1f} ms per task (wall), {per_task_ms * args.cpus:.1f} ms CPU-slot per task"
    )

    ds_cols = replay_columns(meta, False)
    t0 = time.perf_counter()
    ray.data.read_parquet(str(path), file_extensions=["parquet"]).select_columns(ds_cols).map_batches(
        lambda b: pa.table({"n": [b.num_rows]}), batch_format="pyarrow", batch_size=args.batch_rows
    ).materialize()
    read_s = time.perf_counter() - t0
    print(f"ray read-only pass (columns {ds_cols}, batches of {args.batch_rows}): {read_s:.1f} s")

    t0 = time.perf_counter()
    on_ray = sweep(path, "rolling_entropy", GRID, with_topk=False, engine=RayEngine(batch_rows=args.batch_rows))
    ray_s = time.perf_counter() - t0
    print(f"ray engine ({args.cpus} CPUs): {ray_s:.1f} s -> {decisions / ray_s / 1e6:.1f}M decisions/s")

    identical = local.table.to_pylist() == on_ray.table.to_pylist()
    tasks = -(-args.sequences // args.batch_rows)
    print(
        f"tables identical (all {local.table.num_columns} columns x {local.table.num_rows} rows): {identical}; "
        f"{tasks} map tasks; mean large_share {np.mean(local.table.column('large_share').to_numpy()):.3f}"
    )
    print(
        f"local_s={local_s:.1f} ray_s={ray_s:.1f} ray_vs_local={local_s / ray_s:.2f} "
        f"per_worker_decisions_per_s={per_worker:.3g} ray_task_overhead_ms={per_task_ms:.1f} identical={identical}"
    )
    ray.shutdown()
    if not identical:
        raise SystemExit("the engines disagree")


if __name__ == "__main__":
    main()
