"""What the trace integrity checks cost on read: checksummed vs plain copies of one trace, side by side.

Writes one synthetic trace three ways (an Arrow IPC stream from `TraceWriter`, Parquet from
`write_traces`, each with checksums) and the same data without checksums (pyarrow's own
writers), then times `read_traces` on each pair in one run (reads interleaved) and prints the ratios.

    OMP_NUM_THREADS=1 python benchmarks/trace_read_integrity.py [--sequences 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ead_sdk.simulators.synthetic import synthetic_traces  # noqa: E402
from ead_sdk.traces import TraceWriter, read_traces, write_traces  # noqa: E402
from ead_sdk.traces.schema import META_KEY, trace_schema  # noqa: E402


def timed(paths: tuple[Path, Path], repeats: int) -> tuple[float, float]:
    """Median seconds of ``read_traces`` (validation on, as users read) of each path, reads interleaved."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for path, out in zip(paths, times, strict=True):
            start = time.perf_counter()
            read_traces(path)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    traces = synthetic_traces(args.sequences, 128, k=4, seed=0)
    plain_schema = trace_schema(traces.meta).remove_metadata().with_metadata({META_KEY: traces.meta.to_json().encode()})
    table = traces.table.cast(trace_schema(traces.meta))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with TraceWriter(root / "crc.arrows", traces.meta, batch_rows=64) as w:
            w.write_many(traces.sequences())
        with pa.OSFile(str(root / "plain.arrows"), "wb") as sink, ipc.new_stream(sink, plain_schema) as out:
            out.write_table(table.cast(plain_schema), max_chunksize=64)
        write_traces(traces, root / "crc.parquet", row_group_rows=1024)
        pq.write_table(table.cast(plain_schema), root / "plain.parquet", row_group_size=1024, compression="zstd")
        print(f"{args.sequences} sequences x 128 tokens, 2 models, k=4; median of {args.repeats} reads")
        for form in ("arrows", "parquet"):
            crc, plain = timed((root / f"crc.{form}", root / f"plain.{form}"), args.repeats)
            print(f"{form:8s} checksummed {crc:.3f} s  plain {plain:.3f} s  ratio {crc / plain:.2f}")


if __name__ == "__main__":
    main()
