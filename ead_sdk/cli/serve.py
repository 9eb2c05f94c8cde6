"""``ead serve``: an OpenAI-compatible endpoint that routes every token between upstream engines."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from ead_sdk.cli._app import app, user_errors
from ead_sdk.errors import UserError


@app.command()
@user_errors
def serve(
    spec: Path = typer.Option(..., "--spec", help="the calibrated policy spec (JSON)"),
    small: str = typer.Option(..., "--small", help="the small model: an OpenAI-compatible URL or a model folder"),
    large: str = typer.Option(..., "--large", help="the large model: an OpenAI-compatible URL or a model folder"),
    mid: list[str] = typer.Option([], "--mid", help="models between small and large (repeat, smallest first)"),
    host: str = typer.Option("127.0.0.1", help="the one address to listen on (loopback by default)"),
    port: int = typer.Option(8000, help="the port to listen on"),
    tokenizer: str = typer.Option(None, help="the models' tokenizer folder (default: a model folder's own)"),
    served_model_name: str = typer.Option("ead-router", help="the model id clients send and /v1/models lists"),
    max_lanes: int = typer.Option(64, min=1, help="lanes generated at once; past it, 429 with Retry-After"),
    max_tokens: int = typer.Option(1024, min=1, help="the most tokens one request may ask for"),
    allow_policy_override: bool = typer.Option(False, help="honour a request's 'ead' policy override"),
    record: Path = typer.Option(None, "--record", help="record served traffic as trace streams in this folder"),
    record_rotate_rows: int = typer.Option(1000, min=1, help="rows per recording file before a new one"),
    drain_timeout: float = typer.Option(30.0, min=0.0, help="seconds in-flight requests get to finish on SIGTERM"),
    upstream_timeout: float = typer.Option(60.0, min=0.1, help="seconds an upstream may go silent mid-request"),
    num_params: list[int] = typer.Option([], "--num-params", help="each URL upstream's parameter count, in order"),
    cost_model: Path = typer.Option(None, help="per-model costs (JSON) instead of parameter counts"),
    log_level: str = typer.Option("info", help="uvicorn's log level"),
) -> None:
    """Serve an OpenAI-compatible API that routes every token between the upstream models."""
    from ead_sdk.cli.offline import load_cost_model
    from ead_sdk.serve.state import ServeConfig
    from ead_sdk.specs import load_policy

    if not spec.exists():
        raise FileNotFoundError(2, "no such spec file", str(spec))
    if not 0 <= port < 65536:
        raise UserError(f"--port must be in [0, 65535], got {port}")
    policy = load_policy(spec)
    config = ServeConfig(
        model_name=served_model_name,
        max_lanes=max_lanes,
        max_tokens=max_tokens,
        allow_policy_override=allow_policy_override,
        record_dir=record,
        record_rotate_rows=record_rotate_rows,
        cost_model=load_cost_model(cost_model),
        upstream_timeout=upstream_timeout,
    )
    sources = [small, *mid, large]
    if num_params and len(num_params) != len(sources):
        raise UserError(f"--num-params: give one count per upstream ({len(sources)}), got {len(num_params)}")
    options = {"host": host, "port": port, "drain_timeout": drain_timeout, "log_level": log_level}
    asyncio.run(_run(sources, tokenizer, policy, config, num_params or [None] * len(sources), options))


async def _run(
    sources: list[str], tokenizer: str | None, policy: Any, config: Any, counts: list[int | None], options: dict
) -> None:
    """Open the upstreams, check them against the spec, then serve until a signal drains the server."""
    from ead_sdk.serve.server import make_server
    from ead_sdk.serve.state import ServeState
    from ead_sdk.serve.upstreams import ladder_names, open_engine, pick_tokenizer

    tok = pick_tokenizer(tokenizer, sources)
    engines = []
    try:
        for source, name, count in zip(sources, ladder_names(len(sources)), counts, strict=True):
            engines.append(open_engine(source, name, tok, timeout=config.upstream_timeout, num_params=count))
        if tok is None:
            tok = next((e.tokenizer for e in reversed(engines) if e.tokenizer is not None), None)
        state = await ServeState.start(engines, policy, tok, config)
    except BaseException:
        for engine in engines:
            await engine.aclose()
        raise
    server = make_server(state, **options)
    await server.serve()
