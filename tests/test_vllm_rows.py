"""RowTable follows vLLM's persistent batch exactly; released_by_vllm tells an ended request from a paused one.

The batch is simulated the way vLLM's input batch changes it (removed slots, added requests filling
the lowest free slot, condensing one-way moves, swaps), with vLLM's own BatchUpdate ordering:
removed, then added, then moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.backends.vllm_rows import Row, RowTable, released_by_vllm


class Direction(Enum):  # the names vLLM's MoveDirectionality uses
    UNIDIRECTIONAL = auto()
    SWAP = auto()


@dataclass(frozen=True)
class Update:
    batch_size: int
    removed: list
    added: list
    moved: list


def params(opted: bool) -> SimpleNamespace:
    return SimpleNamespace(extra_args={"opt": True} if opted else None)


def select(p):
    return "yes" if (p.extra_args or {}).get("opt") else None


class Batch:
    """A persistent batch: slot -> (request number, opted in, output list)."""

    def __init__(self):
        self.slots: list = []
        self.next = 0

    def step(self, removes: list[int], adds: list[bool], swaps: list[tuple[int, int]]) -> Update:
        live = [i for i, s in enumerate(self.slots) if s is not None]
        removed = sorted({live[r % len(live)] for r in removes}) if live else []
        for i in removed:
            self.slots[i] = None
        added = []
        for opted in adds:
            free = [i for i, s in enumerate(self.slots) if s is None]
            index = free[0] if free else len(self.slots)
            if index == len(self.slots):
                self.slots.append(None)
            self.slots[index] = (self.next, opted, [])
            self.next += 1
            added.append((index, params(opted), [1, 2], self.slots[index][2]))
        moved = self._condense()
        n = len(self.slots)
        for a, b in swaps:
            if n >= 2 and a % n != b % n:
                a, b = a % n, b % n
                self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
                moved.append((a, b, Direction.SWAP))
        return Update(len(self.slots), removed, added, moved)

    def _condense(self) -> list:
        """Fill each hole with the last request, as vLLM's condense() does (one-way moves)."""
        moved = []
        i = 0
        while True:
            while self.slots and self.slots[-1] is None:
                self.slots.pop()
            holes = [j for j, s in enumerate(self.slots) if s is None]
            if not holes:
                return moved
            i, last = holes[0], len(self.slots) - 1
            self.slots[i] = self.slots.pop()
            moved.append((last, i, Direction.UNIDIRECTIONAL))

    def truth(self) -> dict[int, list]:
        return {i: s[2] for i, s in enumerate(self.slots) if s is not None and s[1]}


steps = st.lists(
    st.tuples(
        st.lists(st.integers(0, 50), max_size=3),
        st.lists(st.booleans(), max_size=3),
        st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=2),
    ),
    max_size=25,
)


@given(steps)
def test_row_table_follows_the_batch(plan):
    batch, table = Batch(), RowTable(select)
    for removes, adds, swaps in plan:
        table.update(batch.step(removes, adds, swaps))
        truth = batch.truth()
        assert sorted(table.rows) == sorted(truth)
        for index, output in truth.items():
            assert table.rows[index].output is output  # the very list vLLM keeps
        assert table.indices() == sorted(truth)


def test_rows_that_left_are_returned():
    batch, table = Batch(), RowTable(select)
    table.update(batch.step([], [True, False, True], []))
    first = table.rows[0]
    left = table.update(batch.step([0], [], []))
    assert [r.output for r in left] == [first.output]


def test_no_update_changes_nothing():
    table = RowTable(select)
    assert table.update(None) == [] and table.rows == {}


def test_released_by_vllm_sees_whether_vllm_still_holds_the_list():
    held = [1, 2, 3]  # vLLM's per-request state holds the output list while the request is paused
    row = Row(None, [], held)
    assert not released_by_vllm(row)
    del held  # the request ended: vLLM dropped its state
    assert released_by_vllm(row)


def test_importing_the_sdk_does_not_import_vllm():
    import subprocess
    import sys

    code = "import sys, ead_sdk, ead_sdk.backends as b; b.__all__; print('vllm' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
