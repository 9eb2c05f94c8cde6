"""Nulls at every nesting level of a trace's list columns, and ``extra`` that is not JSON, are refused at read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from ead_sdk.errors import TraceError
from ead_sdk.traces import read_traces
from tests.test_traces import _good_table, _write_table


def _with_null(table: pa.Table, column: str, path: tuple[int, ...]) -> pa.Table:
    """``table`` with the element at ``path`` (row, then indices into the nested lists) set to null."""
    field = table.schema.field(column)
    rows = table.column(column).to_pylist()
    if column == "correct":
        rows = [[True, False] for _ in rows]
    holder = rows
    for i in path[:-1]:
        holder = holder[i]
    holder[path[-1]] = None
    index = table.schema.get_field_index(column)
    return table.set_column(index, field, pa.array(rows, field.type))


CASES = [
    ("token_ids", (1, 2)),  # list<int32>: a null token read back as -2147483648 before
    ("emitted_by", (1, 2)),  # list<int8>: read back as model 0 before
    ("prompt_ids", (1, 0)),
    ("entropy", (1, 1)),  # list<fixed_size_list<float32, M>>: a null position
    ("entropy", (1, 1, 0)),  # ... or a null value inside one
    ("token_logprob", (1, 3, 1)),
    ("top_ids", (1, 0)),
    ("top_ids", (1, 0, 1)),
    ("top_logprobs", (1, 2, 4)),
    ("correct", (1, 1)),  # an optional column: the row may be null, a value inside it may not
]


@pytest.mark.parametrize(("column", "path"), CASES)
def test_a_null_inside_a_list_is_named(tmp_path: Path, column: str, path: tuple[int, ...]) -> None:
    _, table = _good_table()
    bad = _with_null(table, column, path)
    with pytest.raises(TraceError, match=rf"sequence 1 \(sequence_id 11\), field '{column}': holds a null value"):
        read_traces(_write_table(tmp_path, bad))


def test_null_optional_rows_still_read(tmp_path: Path) -> None:
    _, table = _good_table()
    column = pa.array([None, [True, False], None], table.schema.field("correct").type)
    table = table.set_column(table.schema.get_field_index("correct"), table.schema.field("correct"), column)
    assert [s.fields.get("correct") for s in read_traces(_write_table(tmp_path, table))] == [None, (True, False), None]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"a": 1, "a": 2}', r"not valid JSON \(duplicate key 'a'"),
    ],
)
def test_extra_that_is_not_a_json_object_is_refused_at_read(tmp_path: Path, extra: str, message: str) -> None:
    """Before, a bad ``extra`` was accepted at read and raised a raw JSONDecodeError when iterated."""
    _, table = _good_table()
    column = pa.array([None, extra, None], pa.string())
    bad = table.set_column(table.schema.get_field_index("extra"), "extra", column)
    with pytest.raises(TraceError, match=rf"sequence 1 \(sequence_id 11\), field 'extra': {message}"):
        read_traces(_write_table(tmp_path, bad))


@pytest.mark.parametrize(
    ("indices", "message"), [([5], "index 5 out of range"), ([-1], "index -1 out of range"), ([1.5], "integer")]
)
def test_take_refuses_bad_indices(indices, message) -> None:
    """Found while looking for more of the kind: a raw ArrowIndexError, and 1.5 floored to 1."""
    meta, table = _good_table()
    from ead_sdk.traces import TraceSet

    with pytest.raises(TraceError, match=message):
        TraceSet(meta, table).take(indices)
