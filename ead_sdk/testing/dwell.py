"""The dwell promise (`min_dwell`), checked on the models that emitted a closed-loop run's tokens."""

from __future__ import annotations

import numpy as np

from ead_sdk.testing.episodes import EpisodeRun


def dwell_violations(run: EpisodeRun, min_dwell: int, escalation: str) -> list[tuple[int, int]]:
    """``(lane, position)`` of each token at which a model took over too early.

    Under ``"next"`` and ``"retry"`` every stretch of tokens emitted by one model, except a
    lane's last, must hold at least ``min_dwell`` tokens (a retried token counts for the model
    that re-emitted it). Under ``"retry_token"`` an escalation is a one-token correction by a
    larger model: the lane's own model must have emitted ``min_dwell`` tokens in a row before
    each correction and before each switch.
    """
    bad = []
    for lane in range(run.emitted.shape[1]):
        positions = np.flatnonzero(run.live[:, lane])
        emitted, own = run.emitted[positions, lane], run.models[positions, lane]
        correction = (emitted != own) if escalation == "retry_token" else np.zeros(emitted.size, dtype=bool)
        streak = 0  # tokens in a row the stretch before position t holds
        for t in range(emitted.size):
            same = t > 0 and not correction[t - 1] and emitted[t] == emitted[t - 1]
            takeover = correction[t] or (t > 0 and not correction[t - 1] and not same)
            if takeover and streak < min_dwell:
                bad.append((lane, int(positions[t])))
            streak = 0 if correction[t] else streak + 1 if same else 1
    return bad
