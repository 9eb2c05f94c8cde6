"""``ead view``: the HTML report of policies replayed on a trace."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

from pathlib import Path

import typer

from ead_sdk.cli._app import app, console, default_traces, echo_json, user_errors
from ead_sdk.cli.offline import TRACES_HELP, load_cost_model, parse_grid
from ead_sdk.errors import UserError


@app.command()
@user_errors
def view(
    traces: Path = typer.Argument(None, help=TRACES_HELP, show_default=False),
    policy: list[str] = typer.Option(
        [],
        "--policy",
        "-p",
        help="a policy spec: name, JSON or .json file (repeatable; default: rolling_entropy and hysteresis "
        "calibrated on the trace to a 0.3 large share)",
    ),
    out: Path = typer.Option(Path("ead-report.html"), "--out", "-o", help="the HTML file to write"),
    tokenizer: Path = typer.Option(
        None, "--tokenizer", help="tokenizer directory for text (default: the demo's for demo traces, else ids)"
    ),
    sequence: list[int] = typer.Option([], "--sequence", "-s", help="a sequence index to embed (repeatable)"),
    max_sequences: int = typer.Option(500, "--max-sequences", min=1, help="sequences embedded without --sequence"),
    grid: list[str] = typer.Option(
        [], "--grid", "-g", help="sweep of the first policy: NAME=START:STOP:COUNT or NAME=V1,V2 (default: threshold)"
    ),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="draw no frontier"),
    cost_model: Path = typer.Option(
        None, "--cost-model", help="a CostModel JSON (e.g. measured by ead eval --measure-cost) for the summary"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the path and each policy's summary as JSON"),
) -> None:
    """Write a self-contained HTML report: routes, entropies and switches per token, costs, a frontier."""
    from ead_sdk.report import write_report
    from ead_sdk.report.data import calibrated_defaults
    from ead_sdk.specs import load_policy
    from ead_sdk.traces import read_traces

    path = default_traces(traces)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {str(out)!r}: the report is an HTML page; give a path ending in .html")
    trace_set = read_traces(path)
    policies = [load_policy(p) for p in policy] if policy else calibrated_defaults(trace_set)
    sweep_grid = {} if no_sweep else (None if not grid else _grid(grid, policies[0].spec()))
    written = write_report(
        trace_set,
        policies,
        out,
        tokenizer=tokenizer,
        sequences=sequence or None,
        max_sequences=max_sequences,
        sweep_grid=sweep_grid,
        cost_model=load_cost_model(cost_model),
    )
    if as_json:
        echo_json({"report": str(written), "traces": str(path), "policies": [p.spec() for p in policies]})
        return
    console.print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB; open it in a browser, works offline)")


def _grid(items: list[str], spec: dict) -> dict:
    """``--grid`` values, with the first policy's other parameters held at its spec's values."""
    grid = {k: [v] for k, v in spec.get("params", {}).items() if not isinstance(v, list)}
    grid.update(parse_grid(items))
    return grid
