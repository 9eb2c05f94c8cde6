"""Fill a `CostLedger` from a whole replay's route history at once.

The live decoder calls ``ledger.compute / waste / emit`` step by step; replay knows every step
at the end, so it fills the same counters with whole-array reductions. The result is exactly
what the step-by-step calls give (`fill_ledger_stepwise` is that reference; a property test
checks the two agree). The identities used, per lane and model ``m``:

* ``steps`` = positions ``m`` computed (shown to the policy, or re-emitted after a retry);
* ``wasted`` = positions ``m`` computed and a larger model re-emitted;
* a model never computes a position twice, and its consumed count jumps to ``t + 1`` at each
  computation, so ``catchup = (last position computed + 1) - steps``;
* ``prefill`` = prompt length - 1 for each model that computed anything.
"""

from __future__ import annotations

import numpy as np

from ead_sdk.cost import CostLedger


def fill_ledger(
    ledger: CostLedger,
    computed: np.ndarray,
    emitted: np.ndarray,
    lengths: np.ndarray,
    chunk: int = 32,
    lanes: slice | None = None,
) -> None:
    """Record a replay's forwards in ``ledger`` (fresh, lanes = columns of ``computed``).

    Args:
        ledger: a new `CostLedger` for ``computed.shape[1]`` lanes.
        computed: int8 ``(T, lanes)`` model shown to the policy at each position (-1: past the end).
        emitted: int8 ``(T, lanes)`` model that emitted each position (-1: past the end).
        lengths: ``(lanes,)`` generated tokens per lane.
        chunk: positions per block (blocks of rows stay in cache; at most 100).
        lanes: fill only these lanes (ledger rows and columns of ``computed`` and ``emitted``;
            ``lengths`` covers every lane); disjoint slices may be filled from separate threads.
    """
    if lanes is not None:
        view = _LedgerRows(ledger, lanes)
        fill_ledger(view, computed[:, lanes], emitted[:, lanes], np.asarray(lengths)[lanes], chunk)  # type: ignore[arg-type]
        return
    n, m_count = ledger.n, ledger.num_models
    t_max = computed.shape[0]
    chunk = max(1, min(chunk, 100))  # per-block counts fit in int8 (fast reductions, no upcast)
    rank = np.arange(1, chunk + 1, dtype=np.int8)[:, None]
    shown_n = np.zeros((m_count, n), np.int64)
    emitted_n = np.zeros((m_count, n), np.int64)
    wasted_n = np.zeros((m_count, n), np.int64)
    reemit_n = np.zeros((m_count, n), np.int64)
    last = np.full((m_count, n), -1, np.int64)
    switches = np.zeros(n, np.int64)
    for t0 in range(0, t_max, chunk):
        c = computed[t0 : t0 + chunk]
        e = emitted[t0 : t0 + chunk]
        rows = c.shape[0]
        retried = c != e  # False past the end, where both are -1
        any_retry = bool(retried.any())
        for m in range(m_count):
            shown = c == m
            shown_sum = shown.sum(0, dtype=np.int8)
            shown_n[m] += shown_sum
            touched = shown
            if not any_retry:  # every position emitted by the model that computed it
                emitted_n[m] += shown_sum
            else:
                emits = e == m
                emitted_n[m] += emits.sum(0, dtype=np.int8)
                reemit = emits & retried
                wasted_n[m] += (shown & retried).sum(0, dtype=np.int8)
                reemit_n[m] += reemit.sum(0, dtype=np.int8)
                touched = shown | reemit
            # last position computed so far: 1 + the latest row of this block that touched m (0: none).
            latest = np.multiply(touched, rank[:rows], dtype=np.int8).max(0)
            last[m] = np.where(latest > 0, t0 - 1 + latest.astype(np.int64), last[m])
        prev = emitted[t0 - 1 : t0 - 1 + e.shape[0] + 1] if t0 > 0 else e
        change = (prev[1:] != prev[:-1]) & (prev[1:] >= 0)
        switches += change.sum(0, dtype=np.int8)
    steps_n = shown_n + reemit_n
    used = steps_n > 0
    ledger.steps[:] = steps_n.T
    ledger.wasted[:] = wasted_n.T
    ledger.emitted[:] = emitted_n.T
    ledger.consumed[:] = (last + 1).T
    ledger.catchup[:] = np.where(used, last + 1 - steps_n, 0).T
    ledger.used[:] = used.T
    ledger.prefill[:] = np.where(used, np.maximum(ledger.prompt_lengths - 1, 0)[None, :], 0).T
    ledger.switches[:] = switches
    lengths = np.asarray(lengths, np.int64)
    if t_max:
        ledger.last[:] = np.where(lengths > 0, emitted[np.maximum(lengths - 1, 0), np.arange(n)], -1)


class _LedgerRows:
    """Rows ``lanes`` of a `CostLedger`, as views that `fill_ledger` writes through."""

    def __init__(self, ledger: CostLedger, lanes: slice):
        self.num_models = ledger.num_models
        for name in ("steps", "wasted", "emitted", "consumed", "catchup", "used", "prefill", "switches", "last"):
            setattr(self, name, getattr(ledger, name)[lanes])
        self.prompt_lengths = ledger.prompt_lengths[lanes]
        self.n = int(self.switches.shape[0])


def fill_ledger_stepwise(ledger: CostLedger, computed: np.ndarray, emitted: np.ndarray) -> None:
    """The reference: the live decoder's ``compute / waste / emit`` calls, one step at a time."""
    for t in range(computed.shape[0]):
        lanes = np.flatnonzero(computed[t] >= 0)
        if lanes.size == 0:
            continue
        shown = computed[t, lanes].astype(np.int64)
        out = emitted[t, lanes].astype(np.int64)
        ledger.compute(lanes, shown, np.full(lanes.size, t))
        up = out != shown
        if up.any():
            ledger.compute(lanes[up], out[up], np.full(int(up.sum()), t))
            ledger.waste(lanes[up], shown[up])
        ledger.emit(lanes, out)
