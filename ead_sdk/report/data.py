"""What an HTML trace report shows, gathered as one JSON-able dict.

The report replays each policy on a trace (the same `replay` that ``ead replay`` runs, so the
figures agree), keeps per-token routes for the sequences it shows, and optionally sweeps one
policy's parameters to draw a quality/cost frontier. Nothing here renders HTML: `page` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk.errors import ReportError
from ead_sdk.interface import Policy
from ead_sdk.traces import TraceSet

LN2 = math.log(2.0)
THRESHOLD_PARAMS = ("threshold", "upper", "lower")
"""Parameters drawn as horizontal lines over the entropy plot, when a policy has them."""
DEFAULT_MAX_SEQUENCES = 500
"""Sequences whose tokens a report embeds by default (the cost summary covers the whole trace)."""
DEFAULT_SWEEP_POINTS = 24


def _round(values: np.ndarray, digits: int = 4) -> list[Any]:
    """A float array as nested lists rounded for a compact page (NaN and infinities as None)."""
    arr = np.round(np.asarray(values, dtype=np.float64), digits)
    out = arr.astype(object)
    out[~np.isfinite(arr)] = None
    return out.tolist()


def threshold_lines(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The spec's scalar threshold-like parameters, converted to nats (the trace's unit)."""
    params = spec.get("params", {})
    scale = LN2 if params.get("unit", "nats") == "bits" else 1.0
    lines = []
    for name in THRESHOLD_PARAMS:
        value = params.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            lines.append({"name": name, "value": float(value), "nats": float(value) * scale})
    return lines


def policy_label(spec: Mapping[str, Any]) -> str:
    """A short label: the policy name and its parameters."""
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.get("params", {}).items())
    esc = spec.get("escalation", "next")
    return f"{spec['policy']} ({esc}{', ' + params if params else ''})"


def _finite_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if hasattr(v, "item") and callable(v.item):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (tuple, list)):
            out[k] = list(v)
    return out


def policy_section(traces: TraceSet, policy: Policy, shown: np.ndarray, cost_model: Any = None) -> dict[str, Any]:
    """Replay ``policy`` on every sequence; keep the summary, the cost report and the shown routes."""
    from ead_sdk.simulators import replay

    result = replay(traces, policy, cost_model=cost_model)
    spec = policy.spec()
    routes = [result.routes(int(i)).tolist() for i in shown]
    computed = [result.computed_by[: len(r), int(i)].astype(int).tolist() for r, i in zip(routes, shown, strict=True)]
    report = result.report().as_dict()
    section = {
        "label": policy_label(spec),
        "spec": spec,
        "thresholds": threshold_lines(spec),
        "summary": _finite_dict(result.summary()),
        "report": _finite_dict(report),
        "routes": routes,
        "computed": computed,
    }
    if cost_model is not None and getattr(cost_model, "unit", None) == "seconds":
        section["predicted_seconds"] = float(report["cost"])
    return section


def sequence_section(seq: Any, index: int, decode: Any) -> dict[str, Any]:
    """One sequence's tokens (text when a tokenizer is given), entropies and log-probs."""
    tokens = seq.token_ids.astype(int).tolist()
    return {
        "index": index,
        "fields": {k: v for k, v in seq.fields.items() if isinstance(v, (str, int, float, bool, list))},
        "prompt": decode(seq.prompt_ids.astype(int).tolist(), joined=True),
        "tokens": tokens,
        "text": decode(tokens, joined=False),
        "recorded": seq.emitted_by.astype(int).tolist(),
        "entropy": _round(seq.entropy),
        "logprob": _round(seq.token_logprob),
    }


def default_sweep_grid(traces: TraceSet, spec: Mapping[str, Any], points: int = DEFAULT_SWEEP_POINTS) -> dict:
    """A threshold grid for ``spec``'s policy over the trace's entropy range (2nd..98th percentile).

    The spec's other parameters stay fixed. Returns ``{}`` when the policy has no ``threshold``.
    """
    params = dict(spec.get("params", {}))
    if "threshold" not in params:
        return {}
    ent = traces.flat().entropy[:, 0]
    ent = ent[np.isfinite(ent)]
    if ent.size == 0:
        return {}
    lo, hi = np.quantile(ent, [0.02, 0.98])
    scale = LN2 if params.get("unit", "nats") == "bits" else 1.0
    values = np.linspace(max(lo, 1e-3), max(hi, lo + 1e-3), points) / scale
    grid: dict[str, list[Any]] = {k: [v] for k, v in params.items() if k != "threshold" and not isinstance(v, list)}
    grid["threshold"] = [float(round(v, 4)) for v in values]
    return grid


def sweep_section(traces: TraceSet, spec: Mapping[str, Any], grid: dict) -> dict[str, Any]:
    """Sweep ``grid`` of the policy ``spec``: every configuration's cost, quality and frontier membership."""
    from ead_sdk.simulators import sweep

    labelled = "correct" in traces.table.column_names and traces.table.column("correct").null_count < len(traces)
    quality = "quality" if labelled else "agreement"
    result = sweep(traces, dict(spec), grid, quality=quality)
    rows = result.table.to_pylist()
    keys = [c for c in result.table.column_names if c.startswith("param.")]
    front = {tuple(r[k] for k in keys) for r in result.frontier.to_pylist()}
    varied = [k for k in keys if len({repr(r[k]) for r in rows}) > 1]
    points = []
    for r in rows:
        points.append(
            {
                "config": {k[6:]: r[k] for k in keys},
                "varied": {k[6:]: r[k] for k in varied},
                "cost_ratio": r["cost_ratio"],
                "large_share": r["large_share"],
                "quality": r.get(quality),
                "frontier": tuple(r[k] for k in keys) in front,
            }
        )
    escalation = spec.get("escalation", "next")
    return {"policy": spec["policy"], "escalation": escalation, "quality": quality, "points": _finite_points(points)}


def _finite_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for p in points:
        for key in ("cost_ratio", "large_share", "quality"):
            v = p[key]
            p[key] = None if v is None or not math.isfinite(float(v)) else float(v)
    return points


def pick_sequences(n: int, sequences: Sequence[int] | None, max_sequences: int) -> np.ndarray:
    """The indices of the sequences a report embeds: those asked for, else the first ``max_sequences``."""
    if sequences:
        idx = np.asarray(list(sequences), np.int64)
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise ReportError(f"sequence {int(bad[0])} is out of range: the trace has {n} sequences (0..{n - 1})")
        return idx
    if max_sequences < 1:
        raise ReportError(f"max_sequences must be at least 1, got {max_sequences}")
    return np.arange(min(n, max_sequences))


def build_report_data(
    traces: TraceSet,
    policies: Sequence[Policy],
    *,
    decode: Any,
    tokenizer_name: str | None,
    source: str | Path,
    sequences: Sequence[int] | None = None,
    max_sequences: int = DEFAULT_MAX_SEQUENCES,
    sweep_grid: dict | None = None,
    cost_model: Any = None,
) -> dict[str, Any]:
    """Everything the page shows, as JSON-able data (see `ead_sdk.report.write_report`)."""
    if not policies:
        raise ReportError("give at least one policy to replay")
    if len(traces) == 0:
        raise ReportError(f"{source}: the trace has no sequences")
    meta = traces.meta
    shown = pick_sequences(len(traces), sequences, max_sequences)
    data: dict[str, Any] = {
        "source": str(source),
        "models": list(meta.model_names),
        "param_counts": list(meta.param_counts),
        "tokenizer": tokenizer_name,
        "num_sequences": len(traces),
        "num_tokens": traces.num_tokens,
        "policies": [policy_section(traces, p, shown, cost_model) for p in policies],
        "sequences": [sequence_section(traces[int(i)], int(i), decode) for i in shown],
        "cost_unit": "params" if cost_model is None else cost_model.unit,
    }
    first = policies[0].spec()
    grid = default_sweep_grid(traces, first) if sweep_grid is None else sweep_grid
    if grid:
        data["sweep"] = sweep_section(traces, first, grid)
    return data


DEFAULT_POLICIES = (("rolling_entropy", "threshold"), ("hysteresis", "upper"))
"""The policies a report shows when none is given, each calibrated on the trace itself."""


def calibrated_defaults(traces: TraceSet, large_share: float = 0.3) -> list[Policy]:
    """`DEFAULT_POLICIES` with their threshold calibrated on ``traces`` to ``large_share`` large tokens."""
    from ead_sdk.simulators import calibrate
    from ead_sdk.specs import load_policy

    policies = []
    for name, param in DEFAULT_POLICIES:
        policies.append(
            calibrate(traces, load_policy(name), param, target_large_share=large_share, held_out=0.0).policy
        )
    return policies
