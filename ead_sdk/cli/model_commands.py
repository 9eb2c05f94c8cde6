"""``ead record``, ``ead generate``, ``ead eval`` and ``ead demo``: work that runs the models."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ead_sdk import strict_json
from ead_sdk.cli._app import app, console, echo_json, err_console, fmt, to_json, user_errors
from ead_sdk.demo.frontier import DEFAULT_PROMPTS, FRONTIER_TARGETS, FULL_PROMPTS
from ead_sdk.errors import EadError, UserError

MODELS_HELP = "the small and the large model (local paths; default: the embedded demo pair)"
MODEL_STYLES = ("cyan", "bold magenta", "bold yellow", "bold red")


def _models(models: tuple[str, str] | None) -> list[str] | None:
    if not models or all(m is None for m in models):
        return None
    for m in models:
        if not Path(m).exists():
            raise FileNotFoundError(2, "no such model directory", m)
    return list(models)


def _backend(models: tuple[str, str] | None, threads: int | None) -> Any:
    from ead_sdk.demo.live_eval import load_backend, set_threads

    set_threads(threads)
    return load_backend(_models(models))


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSON Lines (a string or a ``{"prompt": ...}`` object per line), or text, one per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                item = strict_json.loads(line)
            except ValueError as exc:
                raise UserError(f"{path}:{i}: not valid JSON ({str(exc)[:120]})") from None
            item = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(item, str):
                raise UserError(f"{path}:{i}: expected a string or an object with a 'prompt' string")
            prompts.append(item)
        else:
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise UserError(f"{path}: no prompts in the file")
    return prompts


def _bar(disable: bool) -> Any:
    """Rich bars on a terminal; plain progress lines on stderr when output goes to a file or a pipe."""
    if not console.is_terminal:
        from ead_sdk.cli.progress import LineProgress

        return LineProgress(disable=disable)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=disable,
    )


@app.command()
@user_errors
def record(
    prompts: Path = typer.Option(..., "--prompts", help="prompts file: .jsonl, or text with one prompt per line"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="the trace file to write (Parquet); finished sequences wait in OUT.arrows beside it"
    ),
    models: tuple[str, str] | None = typer.Option(None, "--models", help=MODELS_HELP, show_default=False),
    policy: str = typer.Option("fixed", "--policy", "-p", help="the policy that routes the recorded trajectory"),
    k: int = typer.Option(8, "--k", help="top-k log-probabilities recorded per model and position"),
    max_new_tokens: int = typer.Option(64, min=1, help="the most generated tokens per prompt"),
    stop: list[str] = typer.Option([], "--stop", help="a stop string (repeatable; '\\n' for a newline)"),
    batch: int = typer.Option(16, min=1, help="prompts decoded together"),
    threads: int = typer.Option(None, min=1, help="torch threads (default 1)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output (no progress bar)"),
) -> None:
    """Decode prompts live and record every model's signals along the trajectory (teacher-forced).

    Finished sequences are kept, as they finish, in OUT.arrows beside OUT; Ctrl-C or SIGTERM
    writes what finished to OUT. After a hard kill, `ead traces recover OUT.arrows --out OUT`.
    """
    from ead_sdk.record_job import record_prompts
    from ead_sdk.specs import load_policy

    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    texts = read_prompts(prompts)
    pol = load_policy(policy)
    backend = _backend(models, threads)
    stops = [s.replace("\\n", "\n") for s in stop]
    with _bar(as_json) as bar:
        task = bar.add_task("recording", total=len(texts))
        res = record_prompts(
            backend,
            pol,
            texts,
            out,
            max_new_tokens=max_new_tokens,
            stop=stops,
            batch=batch,
            k=k,
            overwrite=overwrite,
            progress=lambda done: bar.advance(task, done),
        )
    if as_json:
        echo_json(_record_figures(res, pol))
    _report_recording(res, as_json)


def _report_recording(res: Any, as_json: bool = False) -> None:
    """Say what was written and where; a stopped run exits 130/143, one with lost prompts 1."""
    for index, problem in res.problems:
        err_console.print(f"[yellow]warning:[/yellow] prompt {index} not recorded: {problem}", soft_wrap=True)
    if res.out is not None and not as_json:
        console.print(f"wrote {res.sequences} sequences, {res.tokens} tokens to {res.out}", soft_wrap=True)
    if res.interrupted:
        where = f"kept the {res.sequences} finished sequences in {res.out}" if res.out else "no sequence had finished"
        typer.echo(f"ead record: stopped by {res.interrupted}: {where} ({res.prompts} prompts asked)", err=True)
        raise typer.Exit(130 if res.interrupted == "SIGINT" else 143)
    if res.problems:
        typer.echo(
            f"ead record: error: {len(res.problems)} of {res.prompts} prompts were not recorded (listed above)",
            err=True,
        )
        raise typer.Exit(1)


def _record_figures(res: Any, policy: Any) -> dict[str, Any]:
    """What ``ead record --json`` prints: the file written, what it holds, and what was not recorded."""
    from ead_sdk.traces import read_meta

    meta = read_meta(res.out) if res.out is not None else None
    return {
        "out": None if res.out is None else str(res.out),
        "prompts": res.prompts,
        "sequences": res.sequences,
        "tokens": res.tokens,
        "models": None if meta is None else list(meta.model_names),
        "param_counts": None if meta is None else list(meta.param_counts),
        "k": None if meta is None else meta.k,
        "policy": policy.spec(),
        "problems": [{"prompt": i, "problem": str(p)} for i, p in res.problems],
        "interrupted": res.interrupted,
    }


@app.command()
@user_errors
def generate(
    prompt: str = typer.Argument(..., help="the prompt text"),
    models: tuple[str, str] | None = typer.Option(None, "--models", help=MODELS_HELP, show_default=False),
    policy: str = typer.Option("rolling_entropy", "--policy", "-p", help="a policy spec: name, JSON or .json file"),
    max_new_tokens: int = typer.Option(64, min=1, help="the most generated tokens"),
    stop: list[str] = typer.Option([], "--stop", help="a stop string (repeatable; '\\n' for a newline)"),
    threads: int = typer.Option(None, min=1, help="torch threads (default 1)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Generate from one prompt, each token coloured by the model that emitted it, then the cost report."""
    from ead_sdk.decode import generate as run_generate
    from ead_sdk.specs import load_policy

    pol = load_policy(policy)
    backend = _backend(models, threads)
    res = run_generate(
        backend, pol, [prompt], max_new_tokens=max_new_tokens, stop=[s.replace("\\n", "\n") for s in stop], logprobs=8
    )
    lane = res[0]
    if as_json:
        echo_json(
            {
                "prompt": prompt,
                "text": lane.text,
                "tokens": list(lane.tokens),
                "models": list(lane.models),
                "finish_reason": lane.finish_reason,
                "policy": pol.spec(),
                "report": lane.report.as_dict(),
            }
        )
        return
    out = Text(prompt, style="dim")
    start = 0
    for i in range(1, len(lane.tokens) + 1):
        if i == len(lane.tokens) or lane.models[i] != lane.models[start]:
            m = lane.models[start]
            out.append(backend.decode(list(lane.tokens[start:i])) or "", style=MODEL_STYLES[m % len(MODEL_STYLES)])
            start = i
    console.print(out)
    legend = "  ".join(f"[{MODEL_STYLES[i]}]{name}[/]" for i, name in enumerate(backend.model_names))
    rep = lane.report
    console.print(f"\nmodels: {legend}   policy: {pol.spec()['policy']}")
    console.print(
        f"tokens {rep.tokens}  large share {rep.large_share:.3f}  cost ratio {rep.cost_ratio:.3f}  "
        f"switches {rep.switches}  emitted {list(rep.emitted)}  forwards {list(rep.forwards)}  "
        f"wasted {list(rep.wasted)}  finish {lane.finish_reason}"
    )
    console.print(large_steps_line(rep))


def large_steps_line(rep: Any) -> str:
    """The figure routing is for: the large model's sequential decode steps against large-only's.

    The parameter-count ``cost ratio`` counts catch-up tokens like decode steps, so it stays near 1
    even when the large model decodes far fewer tokens; this line shows the steps themselves.
    """
    steps = rep.forwards[-1] - rep.catchup[-1]
    saved = 1.0 - steps / rep.tokens if rep.tokens else 0.0
    return (
        f"large model: {steps} decode steps for {rep.tokens} tokens (large alone: {rep.tokens}, "
        f"{100 * saved:.0f}% fewer), plus {rep.catchup[-1]} tokens read in catch-up passes"
    )


def _check_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output directory {str(path)!r}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"the output directory {str(path)!r} is not writable")


def _changed_params(policy: Any) -> dict[str, Any]:
    """The parameters that differ from the policy's defaults (the table's "setting" stays short)."""
    try:
        defaults = type(policy)(escalation=policy.escalation).spec()["params"]
    except EadError:  # a parameter without a default: show them all
        defaults = {}
    return {k: v for k, v in policy.spec().get("params", {}).items() if defaults.get(k, object()) != v}


def _ordered(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Rows with their table labels; the curve policy's extra points follow its main row, by share."""
    curve = sorted((r for r in rows if r.get("curve_only")), key=lambda r: r["target"])
    out = []
    for r in rows:
        if r.get("curve_only"):
            continue
        out.append((r["label"] + ("" if r["escalation"] == "next" else " " + r["escalation"]), r))
        if r.get("frontier"):
            out += [(f"  at {c['target']:g}", c) for c in curve]
    return out


def rows_tables(title: str, rows: list[dict[str, Any]]) -> tuple[Table, Table]:
    """The demo/eval tables, narrow enough for 80 columns: cost and quality, then the two relative measures."""
    metrics = ("exact", "soft", "similarity")
    ordered = _ordered(rows)
    cost = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    cost.add_column("policy", no_wrap=True)
    cost.add_column("setting", max_width=22)  # wraps: the numbers must keep their room
    for col in ("large", "cost", "exact", "soft", "sim"):
        cost.add_column(col, justify="right")
    for label, r in ordered:
        # The escalation mode goes into the setting here, so the numbers keep their width.
        name = label if label.startswith(" ") else r["label"]
        setting = (
            r["setting"] if r["escalation"] == "next" or name != r["label"] else f"{r['escalation']}\n{r['setting']}"
        )
        cost.add_row(
            name, setting, fmt(r["large_share"]), fmt(r["cost_ratio"]), *(fmt(r["quality"][m]) for m in metrics)
        )
    rel = Table(
        title="%L: quality as % of large-only's; gap: % of the small-to-large gap recovered",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    rel.add_column("policy", no_wrap=True)
    for head in ("%L ex", "%L soft", "%L sim", "gap ex", "gap soft", "gap sim"):
        rel.add_column(head, justify="right")
    for label, r in ordered:
        rel.add_row(
            label,
            *(fmt(100 * r["share_of_large"][m], 0) for m in metrics),
            *(fmt(100 * r["gap_recovered"][m], 0) for m in metrics),
        )
    return cost, rel


@app.command(name="eval")
@user_errors
def eval_(
    policy: list[str] = typer.Option(..., "--policy", "-p", help="a policy spec (repeatable)"),
    prompts: int = typer.Option(200, "--prompts", "-n", help="held-out demo prompts to evaluate"),
    models: tuple[str, str] | None = typer.Option(None, "--models", help=MODELS_HELP, show_default=False),
    batch: int = typer.Option(2, min=1, help="prompts decoded together (small is faster on CPU)"),
    max_new_tokens: int = typer.Option(48, min=1, help="the most generated tokens per prompt"),
    threads: int = typer.Option(None, min=1, help="torch threads (default 1)"),
    measure_cost: Path = typer.Option(
        None,
        "--measure-cost",
        help="time each model's decode step and catch-up pass here first (CostModel.measure), write the "
        "measurement to this JSON file, and print each policy's predicted time and speed-up beside the measured",
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Live quality vs cost of policies on the demo task, against small-only and large-only."""
    from ead_sdk.demo import task
    from ead_sdk.demo.frontier import DemoRow, relative_measures
    from ead_sdk.demo.live_eval import evaluate_live
    from ead_sdk.specs import load_policy

    if prompts < 1:
        raise UserError("--prompts must be at least 1")
    specs = [
        ("small only", {"policy": "fixed", "params": {"model": 0}}),
        ("large only", {"policy": "fixed", "params": {"model": 1}}),
    ]
    for p in policy:  # every spec is checked before minutes of decoding, not after
        pol = load_policy(p)
        if pol.replay_only:
            raise UserError(f"policy {pol.name!r} needs a trace's look-ahead (replay only): use ead replay")
        specs.append((pol.name, pol.spec()))
    backend = _backend(models, threads)
    items = task.load_eval_prompts(prompts)
    timings = None if measure_cost is None else _measure(backend, items, batch, load_policy(specs[-1][1]), measure_cost)
    rows, scores = [], []
    with _bar(as_json) as bar:
        for label, spec in specs:
            job = bar.add_task(label, total=len(items))
            start = time.perf_counter()
            score = evaluate_live(
                backend,
                load_policy(spec),
                items,
                batch=batch,
                max_new_tokens=max_new_tokens,
                progress=lambda k, job=job: bar.advance(job, k),
            )
            setting = ", ".join(f"{k}={v}" for k, v in _changed_params(load_policy(spec)).items())
            seconds = time.perf_counter() - start
            rows.append(DemoRow.of_run(label, spec, setting, score, seconds, target=None, traces_large_share=None))
            scores.append(score)
    relative_measures(rows)
    data = [r.__dict__ for r in rows]
    predicted = None if timings is None else time_predictions(timings.cost_model(), data, scores)
    if as_json:
        echo_json({"prompts": len(items), "max_new_tokens": max_new_tokens, "rows": data, "time": predicted})
        return
    for table in rows_tables(f"live evaluation on {len(items)} held-out demo prompts", data):
        console.print(table)
    if predicted is not None:
        console.print(time_table(predicted, batch))
        console.print(f"measured cost model written to {measure_cost}")


def _measure(backend: Any, items: list[Any], batch: int, policy: Any, path: Path) -> Any:
    """`measure_forward_times` at the evaluation's batch size and typical prompt length; written to ``path``."""
    from ead_sdk.demo import task
    from ead_sdk.timing import measure_forward_times

    _check_writable_dir(path.parent if str(path.parent) else Path("."))
    lengths = sorted(len(task.encode(it.prompt)) for it in items)
    timings = measure_forward_times(
        backend, batch=batch, prompt_len=max(1, lengths[len(lengths) // 2]), policy=policy, logprobs=8
    )
    path.write_text(to_json(timings.as_dict()) + "\n", encoding="utf-8")
    return timings


def time_predictions(model: Any, rows: list[dict[str, Any]], scores: list[Any]) -> list[dict[str, Any]]:
    """Each row's predicted decode time and speed-up over large-only (from its own report) beside the measured."""
    large = next(r["seconds"] for r in rows if r["label"] == "large only")
    out = []
    for row, score in zip(rows, scores, strict=True):
        realised = large / row["seconds"] if row["seconds"] else float("nan")
        speedup = model.predicted_speedup(score.report)
        out.append(
            {
                "label": row["label"],
                "seconds": row["seconds"],
                "predicted_seconds": model.predict_seconds(score.report),
                "speedup": realised,
                "predicted_speedup": speedup,
                "error": speedup / realised - 1 if realised == realised and realised else float("nan"),
            }
        )
    return out


def time_table(predicted: list[dict[str, Any]], batch: int) -> Table:
    """The measured cost model's predictions against the measured run times."""
    table = Table(title=f"wall-clock: measured vs predicted by the measured cost model (batch {batch})", box=box.SIMPLE)
    for col in ("policy", "seconds", "predicted s", "speed-up", "predicted speed-up", "error"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for p in predicted:
        table.add_row(
            p["label"],
            fmt(p["seconds"], 1),
            fmt(p["predicted_seconds"], 1),
            fmt(p["speedup"], 2),
            fmt(p["predicted_speedup"], 2),
            f"{100 * p['error']:+.0f}%" if p["error"] == p["error"] else "-",
        )
    return table


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("ead-demo"), "--out", "-o", help="directory for frontier.png and figures.json"),
    prompts: int = typer.Option(
        DEFAULT_PROMPTS, "--prompts", "-n", help=f"held-out prompts evaluated live ({FULL_PROMPTS}: the full set)"
    ),
    target: float = typer.Option(0.4, help="large-model share the thresholds are calibrated to (on the traces)"),
    frontier: str = typer.Option(
        ",".join(f"{t:g}" for t in FRONTIER_TARGETS),
        help="further large shares for the rolling_entropy (retry_token) curve ('' for none)",
    ),
    batch: int = typer.Option(2, min=1, help="prompts decoded together (small is faster on CPU)"),
    max_new_tokens: int = typer.Option(48, min=1, help="the most generated tokens per prompt"),
    threads: int = typer.Option(None, min=1, help="torch threads per process (default 1)"),
    workers: int = typer.Option(
        None, min=1, help="processes sharing the policies' live runs (default: one per core, at most 2)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON instead of the table"),
) -> None:
    """The embedded demo: calibrate on the shipped traces, evaluate every policy live, plot the frontier."""
    from ead_sdk.demo.frontier import PAPER_FIGURE, best_row, plot_frontier, run_demo

    if prompts < 1:
        raise UserError("--prompts must be at least 1")
    if not 0.0 < target < 1.0:
        raise UserError("--target must be between 0 and 1")
    try:
        shares = tuple(float(t) for t in frontier.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--frontier must be comma-separated shares, got {frontier!r}") from None
    if any(not 0.0 < t < 1.0 for t in shares):
        raise UserError(f"--frontier shares must be between 0 and 1, got {frontier!r}")
    _check_writable_dir(out)  # before minutes of decoding, not after
    with _bar(as_json) as bar:
        state: dict[str, Any] = {}
        cal = bar.add_task("calibrating on the embedded traces", total=None)

        def on_start(label: str, n: int) -> None:
            if not state:
                bar.update(cal, total=1, completed=1)
            state[label] = bar.add_task(label, total=n)

        figures = run_demo(
            prompts,
            target=target,
            batch=batch,
            max_new_tokens=max_new_tokens,
            frontier=shares,
            threads=threads,
            workers=workers,
            on_start=on_start,
            on_progress=lambda k, label: bar.advance(state[label], k),
        )
    png = plot_frontier(figures, out / "frontier.png")
    figures["plot"] = str(png)
    (out / "figures.json").write_text(to_json(figures) + "\n", encoding="utf-8")
    if as_json:
        echo_json(figures)
        return
    curve = ", ".join(f"{t:g}" for t in figures["frontier"])
    title = (
        f"ead demo: {figures['prompts']} held-out prompts, live, greedy; thresholds calibrated on the "
        f"traces to large share {target:g}" + (f" (entropy rule, retry_token, also at {curve})" if curve else "")
    )
    for table in rows_tables(title, figures["rows"]):
        console.print(table)
        console.print()
    for metric in ("soft", "similarity"):
        best = best_row(figures, metric)
        gap = None if best is None else best["gap_recovered"][metric]
        if gap is not None and gap == gap:  # NaN when small and large score alike (too few prompts)
            console.print(
                f"best with large share <= 40% on {metric}: {best['label']} ({best['escalation']}) recovers "
                f"{100 * gap:.0f}% of the small-to-large gap ({100 * best['share_of_large'][metric]:.0f}% of "
                f"large-only's score) with the large model on {100 * best['large_share']:.0f}% of tokens"
            )
    console.print(f"for scale, the EAD paper (another task and model pair): {PAPER_FIGURE}")
    console.print(f"wrote {png} and {out / 'figures.json'} in {figures['seconds']['total']:.0f} s")
