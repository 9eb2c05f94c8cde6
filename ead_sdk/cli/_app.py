"""The typer application, the shared console, and the user-error guard every command wears."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ead_sdk.errors import EadError

app = typer.Typer(
    help="ead-sdk: token-level routing between small and large language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
MAX_MESSAGE = 400  # an error naming a long per-lane array still fits a terminal line or two


def user_errors(fn: F) -> F:
    """Turn the errors a user can fix into one line on stderr and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = functools.partial(_show_warning, fn)
                return fn(*args, **kwargs)
        except (EadError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            msg = str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.strerror}: {exc.filename}"
            _fail(fn, msg)
        except ImportError as exc:
            _fail(fn, f"{exc} (install the extras: pip install 'ead-sdk[all]')")

    return wrapper  # type: ignore[return-value]


def _show_warning(fn: Callable[..., Any], message: Warning | str, category: type, *_: Any, **__: Any) -> None:
    """A warning as one line on stderr, ``ead COMMAND: warning: MSG`` (no source file and line)."""
    msg = " ".join(str(message).split())
    typer.echo(f"ead {fn.__name__.rstrip('_')}: warning: {msg}", err=True)


def _fail(fn: Callable[..., Any], msg: str) -> NoReturn:
    """Print ``ead COMMAND: error: MSG`` as one line on stderr and exit with status 1."""
    msg = " ".join(msg.split())  # a multi-line message (a JSON error, a wrapped path) stays one line
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 3] + "..."
    typer.echo(f"ead {fn.__name__.rstrip('_').replace('_', '-')}: error: {msg}", err=True)
    raise typer.Exit(1) from None


def to_json(data: Any) -> str:
    """``data`` as strict JSON text (NaN and infinities as null, so any JSON parser reads it)."""
    return json.dumps(_finite(data), indent=2)


def echo_json(data: Any) -> None:
    """Print ``data`` as strict JSON on stdout."""
    typer.echo(to_json(data))


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return _finite(x.item())
    return x


def default_traces(traces: Path | None) -> Path:
    """``traces``, or the embedded demo traces when none is given."""
    if traces is not None:
        if not traces.exists():
            raise FileNotFoundError(2, "no such trace file", str(traces))
        return traces
    from ead_sdk.demo.record_traces import default_traces_path

    return default_traces_path()


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, ``None``/NaN as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@app.callback()
def _root() -> None:
    """Route each token to the small or the large model by how uncertain the text is."""


@app.command()
@user_errors
def policies(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the discovered policies, their distributions and parameters."""
    from ead_sdk.registry import PluginWarning, default_registry

    with warnings.catch_warnings():  # each problem is printed below, once
        warnings.simplefilter("ignore", PluginWarning)
        reg = default_registry()
    if as_json:
        echo_json(
            {
                "policies": [info.as_dict() for info in reg.policies.values()],
                "problems": [str(p) for p in reg.problems],
            }
        )
        return
    table = Table(title="Installed routing policies")
    for col in ("policy", "distribution", "models", "parameters", "summary"):
        table.add_column(col)
    for info in sorted(reg.policies.values(), key=lambda i: i.name):
        params = ", ".join(
            f"{k}={v.get('default', '?')}" if "default" in v else f"{k} (required)" for k, v in info.parameters.items()
        )
        models = "any" if info.max_models is None else f"<= {info.max_models}"
        table.add_row(info.name, info.distribution, models, params, info.summary)
    console.print(table)
    for problem in reg.problems:
        err_console.print(f"[yellow]warning:[/yellow] {problem}")


def main() -> None:
    """Entry point of the ``ead`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
