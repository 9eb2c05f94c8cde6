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


def fill_ledger(ledger: CostLedger, computed: np.ndarray, emitted: np.ndarray, lengths: np.ndarray) -> None:
    """Record a replay's forwards in ``ledger`` (fresh, lanes = columns of ``computed``).

    Args:
        ledger: a new `CostLedger` for ``computed.shape[1]`` lanes.
        computed: int8 ``(T, lanes)`` model shown to the policy at each position (-1: past the end).
        emitted: int8 ``(T, lanes)`` model that emitted each position (-1: past the end).
        lengths: ``(lanes,)`` generated tokens per lane.
    """
    n, m_count = ledger.n, ledger.num_models
    t_max = computed.shape[0]
    retried = computed != emitted  # False past the end, where both are -1
    any_retry = bool(retried.any())
    for m in range(m_count):
        shown = computed == m
        emits = emitted == m
        shown_n = np.count_nonzero(shown, axis=0)
        emitted_n = np.count_nonzero(emits, axis=0)
        if any_retry:
            reemit = emits & retried
            wasted_n = np.count_nonzero(shown & retried, axis=0)
            steps_n = shown_n + np.count_nonzero(reemit, axis=0)
            touched = shown | reemit
        else:
            wasted_n = np.zeros(n, np.int64)
            steps_n = shown_n
            touched = shown
        used = steps_n > 0
        # last position computed: the largest t with touched[t]; -1 when never.
        last = np.where(used, t_max - 1 - np.argmax(touched[::-1], axis=0), -1)
        ledger.steps[:, m] = steps_n
        ledger.wasted[:, m] = wasted_n
        ledger.emitted[:, m] = emitted_n
        ledger.consumed[:, m] = last + 1
        ledger.catchup[:, m] = np.where(used, last + 1 - steps_n, 0)
        ledger.used[:, m] = used
        ledger.prefill[:, m] = np.where(used, np.maximum(ledger.prompt_lengths - 1, 0), 0)
    lengths = np.asarray(lengths, np.int64)
    if t_max > 1:
        change = (emitted[1:] != emitted[:-1]) & (emitted[1:] >= 0)
        ledger.switches[:] = np.count_nonzero(change, axis=0)
    has = lengths > 0
    last_tok = np.maximum(lengths - 1, 0)
    if t_max:
        ledger.last[:] = np.where(has, emitted[last_tok, np.arange(n)], -1)


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
