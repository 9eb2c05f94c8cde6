"""``ead train-router``: fit a learned router on traces and write it as a ``learned`` policy spec."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from ead_sdk.cli._app import app, console, echo_json, fmt, user_errors
from ead_sdk.errors import UserError
from ead_sdk.router.features import DEFAULT_FEATURES, FEATURES


@app.command("train-router")
@user_errors
def train_router(
    traces: Path = typer.Argument(..., help="a trace file with top-k log-probabilities (two models)"),
    out: Path = typer.Option(..., "--out", "-o", help="the learned policy spec to write (JSON)"),
    features: str = typer.Option(",".join(DEFAULT_FEATURES), help=f"comma-separated, of: {', '.join(FEATURES)}"),
    model: str = typer.Option("logistic", help="logistic or mlp (one hidden tanh layer)"),
    label: str = typer.Option(
        "top1", help="top1 (greedy tokens differ) or top_p (small's token outside large's top-p)"
    ),
    p: float = typer.Option(0.9, help="nucleus mass of the top_p label"),
    max_unknown: float = typer.Option(0.0, help="share of positions a top_p label may leave undecided (dropped)"),
    escalation: str = typer.Option("retry_token", help="escalation mode the router will run in"),
    k: int = typer.Option(None, help="log-probabilities read (default: min(8, the trace's k))"),
    window: int = typer.Option(4, help="tokens of history for the window and routes features"),
    hidden: int = typer.Option(16, help="hidden units of the mlp"),
    seed: int = typer.Option(0, help="seed of the sequence split and the initial weights"),
    valid: float = typer.Option(0.15, help="share of sequences for early stopping"),
    test: float = typer.Option(0.25, help="share of sequences held out for the report"),
    weights: str = typer.Option("auto", help="auto, inline (in the JSON) or file (safetensors + SHA-256)"),
    report: Path = typer.Option(None, help="also write the training report (JSON) here"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Train a router that predicts where the large model would emit another token."""
    from ead_sdk.router import FeatureSpec, router_spec
    from ead_sdk.router import train_router as fit
    from ead_sdk.traces import read_traces

    if not traces.exists():
        raise FileNotFoundError(2, "no such trace file", str(traces))
    if out.suffix != ".json":
        raise UserError(f"--out must end in .json, got {out}")
    trace_set = read_traces(traces)
    names = tuple(n.strip() for n in features.split(",") if n.strip())
    kk = k if k is not None else max(2, min(8, int(trace_set.meta.k)))
    spec = FeatureSpec(names, kk, window)
    net, rep = fit(
        trace_set,
        features=spec,
        model=model,
        label=label,
        p=p,
        escalation=escalation,
        hidden=hidden,
        valid=valid,
        test=test,
        seed=seed,
        max_unknown=max_unknown,
    )
    router_spec(net, out, escalation=escalation, weights=weights)
    figures = {**dataclasses.asdict(rep), "out": str(out), "parameters": net.size}
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if as_json:
        echo_json(figures)
        return
    held = rep.held_out
    console.print(
        f"{model} router over {', '.join(names)} ({net.size} weights): {rep.positions['train']} training positions "
        f"from {rep.sequences['train']} sequences, stopped at iteration {rep.best_iteration} of {rep.iterations}"
    )
    console.print(
        f"held-out {held['split']} ({rep.positions['test'] or rep.positions['valid']} positions, "
        f"{fmt(rep.positive_share['test'])} differ): AUC {fmt(held['auc'])}"
        + (f" (entropy alone {fmt(held['auc_entropy_alone'])})" if "auc_entropy_alone" in held else "")
    )
    for row in held["at_share"]:
        console.print(
            f"  flag {row['flagged']:.0%} of positions: precision {fmt(row['precision'])}, recall {fmt(row['recall'])}"
        )
    console.print(f"wrote {out} (calibrate its threshold: ead calibrate TRACES -p {out} --param threshold ...)")
