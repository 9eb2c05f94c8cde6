"""The Ray engine's wire format: per-configuration `Totals` as Arrow rows, and workers' errors.

A Ray task returns its totals (or the SDK error it hit) as a small Arrow table of
`TOTALS_SCHEMA`; the driver merges the rows exactly with `merge_table`, which raises a reported
error as its own class. Only JSON-able values and Arrow tables travel, never Python objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ead_sdk.errors import EadError
from ead_sdk.simulators.totals import COUNTERS, Totals


def totals_row(totals: Totals) -> dict[str, Any]:
    """The totals as one row of `TOTALS_SCHEMA` (without the ``config`` column)."""
    return {
        "num_models": totals.num_models,
        "sequences": totals.sequences,
        **{name: getattr(totals, name).tolist() for name in COUNTERS},
        "switches": totals.switches,
        "agreement": totals.agreement,
        "loglik": totals.loglik,
        "has_labels": totals.has_labels,
        "labelled": totals.labelled,
        "quality": list(totals.quality),
        "correct_small": totals.correct_small,
        "correct_large": totals.correct_large,
    }


def totals_from_row(row: dict[str, Any]) -> Totals:
    """Totals from a row written by `totals_row` (extra keys such as ``config`` are ignored)."""
    return Totals(
        num_models=int(row["num_models"]),
        sequences=int(row["sequences"]),
        **{name: np.asarray(row[name], np.int64) for name in COUNTERS},
        switches=int(row["switches"]),
        agreement=None if row["agreement"] is None else int(row["agreement"]),
        loglik=None if row["loglik"] is None else [float(v) for v in row["loglik"]],
        has_labels=bool(row["has_labels"]),
        labelled=int(row["labelled"]),
        quality=[float(v) for v in row["quality"]],
        correct_small=int(row["correct_small"]),
        correct_large=int(row["correct_large"]),
    )


TOTALS_SCHEMA = pa.schema(
    [
        pa.field("config", pa.int64()),
        pa.field("num_models", pa.int64()),
        pa.field("sequences", pa.int64()),
        *[pa.field(name, pa.list_(pa.int64())) for name in COUNTERS],
        pa.field("switches", pa.int64()),
        pa.field("agreement", pa.int64()),
        pa.field("loglik", pa.list_(pa.float64())),
        pa.field("has_labels", pa.bool_()),
        pa.field("labelled", pa.int64()),
        pa.field("quality", pa.list_(pa.float64())),
        pa.field("correct_small", pa.int64()),
        pa.field("correct_large", pa.int64()),
        pa.field("error_type", pa.string()),
        pa.field("error", pa.string()),
    ]
)
"""Arrow schema of per-configuration totals: one row per (batch, configuration)."""


def totals_table(totals: list[Totals], configs: list[int]) -> pa.Table:
    """Totals as an Arrow table of `TOTALS_SCHEMA`, row ``i`` for configuration ``configs[i]``."""
    rows = [{"config": c, **totals_row(t)} for c, t in zip(configs, totals, strict=True)]
    return pa.Table.from_pylist(rows, schema=TOTALS_SCHEMA)


def error_table(exc: EadError) -> pa.Table:
    """A worker's SDK error as a one-row `TOTALS_SCHEMA` table (`merge_table` raises it)."""
    return pa.Table.from_pylist(
        [{"config": -1, "error_type": type(exc).__name__, "error": str(exc)}], schema=TOTALS_SCHEMA
    )


def _raise_reported(row: dict[str, Any]) -> None:
    import ead_sdk.errors as errors

    cls = getattr(errors, str(row["error_type"]), EadError)
    if not (isinstance(cls, type) and issubclass(cls, EadError)):
        cls = EadError
    raise cls(row["error"])


def merge_table(table: pa.Table, into: dict[int, Totals]) -> int:
    """Merge every row of a `totals_table` into ``into`` (keyed by configuration).

    Returns:
        The lanes merged (sequences summed over the rows).

    Raises:
        EadError: the error a worker reported (`error_table`), as its own class.
    """
    lanes = 0
    for row in table.to_pylist():
        if row.get("error") is not None:
            _raise_reported(row)
        t = totals_from_row(row)
        c = int(row["config"])
        if c in into:
            into[c].merge(t)
        else:
            into[c] = t
        lanes += t.sequences
    return lanes


__all__ = ["TOTALS_SCHEMA", "error_table", "merge_table", "totals_from_row", "totals_row", "totals_table"]
