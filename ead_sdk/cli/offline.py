"""``ead replay``, ``ead sweep`` and ``ead calibrate``: offline work on recorded traces."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.progress import Progress
from rich.table import Table

from ead_sdk.cli._app import app, console, default_traces, echo_json, fmt, user_errors
from ead_sdk.cli.signal_option import SIGNAL_HELP, describe, with_signal
from ead_sdk.errors import UserError

TRACES_HELP = "a trace file or Parquet dataset (default: the embedded demo traces)"
RECOVER_HELP = "read a stream cut short by a crash up to its last complete batch (a warning says how much)"
SUMMARY_KEYS = (
    "sequences",
    "tokens",
    "large_share",
    "cost_ratio",
    "switches_per_1k_tokens",
    "wasted",
    "agreement",
    "loglik_per_token",
    "quality",
    "quality_small",
    "quality_large",
    "apgr",
)


MAX_GRID_COUNT = 100_000
"""The most values one ``--grid NAME=START:STOP:COUNT`` range may have."""


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``['threshold=0.5:3:16', 'window=2,4,8']`` as ``{'threshold': linspace(0.5, 3, 16), 'window': [2, 4, 8]}``.

    ``name=a:b:n`` is ``n`` evenly spaced values from ``a`` to ``b``; ``name=v1,v2,...`` a list
    (integers, floats, or strings).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, eq, values = item.partition("=")
        name = name.strip()
        if not eq or not name or not values.strip():
            raise UserError(f"--grid {item!r}: expected NAME=START:STOP:COUNT or NAME=V1,V2,...")
        if name in grid:
            raise UserError(f"--grid {item!r}: {name!r} is given twice (list every value in one --grid)")
        if ":" in values:
            parts = values.split(":")
            try:
                lo, hi, count = float(parts[0]), float(parts[1]), int(parts[2])
            except (ValueError, IndexError):
                raise UserError(f"--grid {item!r}: a range is START:STOP:COUNT with numbers") from None
            if len(parts) != 3 or not 1 <= count <= MAX_GRID_COUNT:
                raise UserError(
                    f"--grid {item!r}: a range is START:STOP:COUNT with COUNT >= 1 and <= {MAX_GRID_COUNT:,}"
                )
            grid[name] = [float(v) for v in np.linspace(lo, hi, count)]
        else:
            grid[name] = [_scalar(v.strip()) for v in values.split(",") if v.strip()]
            if not grid[name]:
                raise UserError(f"--grid {item!r}: no values (expected NAME=V1,V2,...)")
    if not grid:
        raise UserError("give at least one --grid NAME=VALUES")
    return grid


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def summary_table(title: str, summary: dict[str, Any]) -> Table:
    """A two-column table of a replay summary."""
    table = Table(title=title, show_header=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in SUMMARY_KEYS:
        if key in summary:
            table.add_row(key, fmt(summary[key], 4))
    return table


@app.command()
@user_errors
def replay(
    traces: Path = typer.Argument(None, help=TRACES_HELP, show_default=False),
    policy: str = typer.Option(..., "--policy", "-p", help="a policy spec: a name, a JSON string or a .json file"),
    signal: str = typer.Option(None, "--signal", help=SIGNAL_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    recover: bool = typer.Option(False, "--recover", help=RECOVER_HELP),
) -> None:
    """Replay a policy on recorded traces: the cost/quality report (teacher-forced, one fixed path)."""
    from ead_sdk.simulators import replay as run_replay
    from ead_sdk.specs import load_policy
    from ead_sdk.traces import read_traces

    path = default_traces(traces)
    pol = with_signal(load_policy(policy), signal)
    result = run_replay(read_traces(path, recover=recover), pol)
    summary = result.summary()
    if as_json:
        figures = {"traces": str(path), "policy": pol.spec(), "signal": pol.spec()["signal"], "summary": summary}
        echo_json({**figures, "report": result.report().as_dict()})
        return
    console.print(f"policy: {pol.spec()}")
    console.print(f"signal: {describe(pol)}")
    console.print(summary_table(f"replay of {path.name}", summary))


@app.command()
@user_errors
def sweep(
    traces: Path = typer.Argument(None, help=TRACES_HELP, show_default=False),
    policy: str = typer.Option(..., "--policy", "-p", help="a policy spec: a name, a JSON string or a .json file"),
    grid: list[str] = typer.Option(..., "--grid", "-g", help="NAME=START:STOP:COUNT or NAME=V1,V2 (repeatable)"),
    escalation: str = typer.Option(
        None, help="escalation mode of every configuration: next, retry or retry_token (default: the spec's)"
    ),
    quality: str = typer.Option(
        None,
        help="frontier quality: agreement, loglik_per_token or quality "
        "(default: quality when the trace has labels, else agreement)",
    ),
    signal: str = typer.Option(None, "--signal", help=SIGNAL_HELP, show_default=False),
    plot: Path = typer.Option(None, "--plot", help="write the quality/cost frontier as a PNG here"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    engine: str = typer.Option(
        "local", "--engine", help="local (this process) or ray (Ray Data over a Parquet dataset; needs the ray extra)"
    ),
    address: str = typer.Option(
        None, "--address", help="Ray cluster for --engine ray (default: RAY_ADDRESS, else a local instance)"
    ),
    batch_rows: int = typer.Option(1024, "--batch-rows", help="sequences per Ray task (--engine ray)"),
    recover: bool = typer.Option(False, "--recover", help=RECOVER_HELP + " (--engine local)"),
) -> None:
    """Replay every configuration of a parameter grid in one batched run: table and Pareto frontier."""
    from ead_sdk.simulators import LocalEngine, RayEngine
    from ead_sdk.simulators import sweep as run_sweep
    from ead_sdk.specs import load_policy
    from ead_sdk.traces import read_traces

    path = default_traces(traces)
    params = parse_grid(grid)
    base = with_signal(load_policy(policy), signal)
    if escalation is not None:
        base = load_policy({**base.spec(), "escalation": escalation})
    escalation, policy = base.escalation, base.name
    if plot is not None:  # checked before the sweep runs
        if plot.suffix.lower() != ".png":
            raise UserError(f"--plot {str(plot)!r}: the frontier plot is a PNG; give a path ending in .png")
        plot.parent.mkdir(parents=True, exist_ok=True)
    if engine not in ("local", "ray"):
        raise UserError(f"--engine {engine!r}: expected local or ray")
    if recover and engine == "ray":
        raise UserError("--recover reads a crashed stream locally; compact it first for --engine ray")
    trace_set = read_traces(path, columns=["correct"] if engine == "ray" else None, recover=recover)
    if quality is None:
        quality = "quality" if _has_labels(trace_set) else "agreement"
    if engine == "ray":  # the workers read the dataset; this process reads only the labels column
        with Progress(transient=True, console=console, disable=as_json) as bar:
            task = bar.add_task("sweep on Ray (sequences)", total=None)
            result = run_sweep(
                path,
                base,
                params,
                quality=quality,
                engine=RayEngine(address=address, batch_rows=batch_rows),
                progress=lambda done, total: bar.update(task, completed=done, total=total if total >= 0 else None),
            )
    else:
        result = run_sweep(trace_set, base, params, quality=quality, engine=LocalEngine())
    rows = result.table.to_pylist()
    front = {tuple(sorted(r.items())) for r in (_row_key(x) for x in result.frontier.to_pylist())}
    for r in rows:
        r["frontier"] = tuple(sorted(_row_key(r).items())) in front
    if plot is not None:
        plot_sweep(rows, quality, plot, f"{policy} on {path.name}")
    if as_json:
        echo_json(
            {
                "traces": str(path),
                "policy": policy,
                "escalation": escalation,
                "signal": base.spec()["signal"],
                "quality": quality,
                "rows": rows,
                "plot": str(plot) if plot else None,
            }
        )
        return
    _print_sweep(result, rows, f"sweep of {policy} ({escalation}, {describe(base)}) on {path.name}", quality)
    if plot is not None:
        console.print(f"frontier plot: {plot}")


def load_cost_model(path: Path | None) -> Any:
    """The `CostModel` in a JSON file (`CostModel.as_dict`'s form, or ``ead eval --measure-cost``'s), or ``None``."""
    if path is None:
        return None
    import json

    from ead_sdk.cost import CostModel

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"--cost-model {path}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and "cost_model" in data:  # a measurement: its fitted model
        data = data["cost_model"]
    return CostModel.from_dict(data)


def _has_labels(trace_set: Any) -> bool:
    table = trace_set.table
    return "correct" in table.column_names and table.column("correct").null_count < table.num_rows


def _row_key(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k.startswith("param.")}


def plot_sweep(rows: list[dict[str, Any]], quality: str, path: Path, title: str) -> Path:
    """Scatter every configuration (cost ratio vs quality) and draw the Pareto frontier, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    x = [r["cost_ratio"] for r in rows]
    y = [r.get(quality) for r in rows]
    ax.scatter(x, y, s=18, color="tab:blue", alpha=0.6, label="configurations")
    front = sorted((r["cost_ratio"], r.get(quality)) for r in rows if r["frontier"])
    if front:
        ax.plot(*zip(*front, strict=True), color="tab:red", marker="o", label="Pareto frontier")
    ax.set_xlabel("cost ratio (cost / large model alone)")
    ax.set_ylabel(quality)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


@app.command()
@user_errors
def calibrate(
    traces: Path = typer.Argument(None, help=TRACES_HELP, show_default=False),
    policy: str = typer.Option(..., "--policy", "-p", help="a policy spec: a name, a JSON string or a .json file"),
    param: str = typer.Option(..., "--param", help="the numeric parameter to calibrate (e.g. threshold)"),
    target_large_share: float = typer.Option(None, help="wanted share of tokens from the large model"),
    target_cost_ratio: float = typer.Option(None, help="wanted cost relative to the large model alone"),
    held_out: float = typer.Option(0.5, help="share of sequences held out to check the calibrated value"),
    low: float = typer.Option(None, help="lower end of the search interval (default: the parameter's bound)"),
    high: float = typer.Option(None, help="upper end of the search interval"),
    out: Path = typer.Option(None, "--out", "-o", help="write the calibrated policy spec (JSON) here"),
    cost_model: Path = typer.Option(
        None,
        "--cost-model",
        help="a CostModel JSON for --target-cost-ratio (e.g. measured seconds from ead eval --measure-cost; "
        "default: the trace's parameter counts)",
    ),
    signal: str = typer.Option(None, "--signal", help=SIGNAL_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    recover: bool = typer.Option(False, "--recover", help=RECOVER_HELP),
) -> None:
    """Pick one parameter so that replay hits a target large-model share (or cost ratio).

    The spec written records the signal it was calibrated on (``--signal``, default the spec's).
    """
    from ead_sdk.simulators import calibrate as run_calibrate
    from ead_sdk.specs import load_policy, save_policy
    from ead_sdk.traces import read_traces

    path = default_traces(traces)
    if (low is None) != (high is None):
        raise UserError("give both --low and --high, or neither")
    pol = with_signal(load_policy(policy), signal)
    with Progress(transient=True, console=console, disable=as_json) as bar:
        bar.add_task("calibrating", total=None)
        res = run_calibrate(
            read_traces(path, recover=recover),
            pol,
            param,
            target_large_share=target_large_share,
            target_cost_ratio=target_cost_ratio,
            held_out=held_out,
            bounds=None if low is None else (low, high),
            cost_model=load_cost_model(cost_model),
        )
    if out is not None:
        save_policy(res.policy, out)
    figures = {
        "parameter": res.parameter,
        "value": res.value,
        "metric": res.metric,
        "target": res.target,
        "calibration": res.calibration,
        "held_out": res.held_out,
        "sequences": list(res.sequences),
        "evaluations": res.evaluations,
        "signal": res.policy.spec()["signal"],
        "spec": res.policy.spec(),
        "out": str(out) if out else None,
    }
    if as_json:
        echo_json(figures)
        return
    console.print(
        f"{pol.name}: {res.parameter} = {res.value:.6g}  ->  {res.metric} {res.calibration:.4f} on the "
        f"calibration split ({res.sequences[0]} sequences), {fmt(res.held_out, 4)} held out "
        f"({res.sequences[1]}); target {res.target:g}; signal: {describe(res.policy)}"
    )
    if out is not None:
        console.print(f"wrote {out}")


def _print_sweep(result: Any, rows: list[dict[str, Any]], title: str, quality: str) -> None:
    """The sweep's rows as a table, cheapest first, frontier rows starred."""
    pcols = [c for c in result.table.column_names if c.startswith("param.")]
    table = Table(title=f"{title}: {len(rows)} configurations")
    for col in [*(c[6:] for c in pcols), "large_share", "cost_ratio", quality, "frontier"]:
        table.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: r["cost_ratio"]):
        table.add_row(
            *(fmt(r[c]) for c in pcols),
            fmt(r["large_share"]),
            fmt(r["cost_ratio"]),
            fmt(r.get(quality), 4),
            "*" if r["frontier"] else "",
        )
    console.print(table)
