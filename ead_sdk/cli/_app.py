"""The ``ead`` command line."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="ead-sdk: token-level routing between small and large language models.", no_args_is_help=True)
console = Console()


@app.callback()
def _root() -> None:
    """Route each token to the small or the large model by how uncertain the text is."""


@app.command()
def policies(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the discovered policies, their distributions and parameters."""
    from ead_sdk.registry import default_registry

    reg = default_registry()
    if as_json:
        out = {
            "policies": [info.as_dict() for info in reg.policies.values()],
            "problems": [str(p) for p in reg.problems],
        }
        typer.echo(json.dumps(out, indent=2))
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
        console.print(f"[yellow]warning:[/yellow] {problem}")


def main() -> None:
    """Entry point of the ``ead`` script."""
    app()


if __name__ == "__main__":
    main()
