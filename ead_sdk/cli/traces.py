"""``ead traces``: work on trace files themselves (``ead traces recover``)."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

from pathlib import Path

import typer

from ead_sdk.cli._app import app, console, err_console, user_errors

traces_app = typer.Typer(help="Trace files: recover a recording stream left by a crash.", no_args_is_help=True)
app.add_typer(traces_app, name="traces")


@traces_app.command()
@user_errors
def recover(
    stream: Path = typer.Argument(..., help="the recording stream (OUT.arrows, left by a killed `ead record`)"),
    out: Path = typer.Option(..., "--out", "-o", help="the Parquet trace to write"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
) -> None:
    """Write every complete sequence of a stream cut short by a crash to a Parquet trace."""
    from ead_sdk.traces.recover import recover as run_recover

    if not stream.exists():
        raise FileNotFoundError(2, "no such stream", str(stream))
    res = run_recover(stream, out, overwrite=overwrite)
    for note in res.notes:
        err_console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    console.print(
        f"recovered {res.sequences} sequences, {res.tokens} tokens from {stream} into {res.path}; "
        f"{stream} can be deleted once you have checked it",
        soft_wrap=True,
    )
