"""Fast offline replay of logit traces: replay, sweeps, calibration, metrics, synthetic traces.

A trace is scored teacher-forced along one trajectory, so replay is a counterfactual on that
fixed path: it says which model would have emitted each token and at what cost.
"""

from __future__ import annotations

from ead_sdk.simulators.calibrate import CalibrationResult, calibrate
from ead_sdk.simulators.engines import LocalEngine, RayEngine
from ead_sdk.simulators.ledger import fill_ledger
from ead_sdk.simulators.metrics import aggregate, lane_metrics, pgr, routellm_summary
from ead_sdk.simulators.replay import ReplayData, ReplayResult, replay
from ead_sdk.simulators.sweep import SweepResult, expand_grid, pareto_frontier, sweep, sweep_totals
from ead_sdk.simulators.synthetic import synthetic_traces
from ead_sdk.simulators.totals import Totals

__all__ = [
    "CalibrationResult",
    "LocalEngine",
    "RayEngine",
    "ReplayData",
    "ReplayResult",
    "SweepResult",
    "Totals",
    "aggregate",
    "calibrate",
    "expand_grid",
    "fill_ledger",
    "lane_metrics",
    "pareto_frontier",
    "pgr",
    "replay",
    "routellm_summary",
    "sweep",
    "sweep_totals",
    "synthetic_traces",
]
