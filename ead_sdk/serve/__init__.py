"""``ead serve``: an OpenAI-compatible endpoint that routes every token between upstream engines.

The pieces, smallest first: `ServeConfig` (the settings), `ServeState.start` (builds the hand-off
routers and checks the upstreams against the spec before anything binds), `create_app` (the
Starlette app: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, ``/health``,
``/metrics``) and `make_server` (uvicorn, with a graceful drain on SIGTERM). The ``ead serve``
command puts them together; embed them to serve from your own process::

    state = await ServeState.start([small, large], policy, tokenizer, ServeConfig(max_lanes=32))
    await make_server(state, "127.0.0.1", 8000).serve()

Needs the ``serve`` extra (starlette, uvicorn, prometheus-client); names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ead_sdk.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from ead_sdk.serve.app import create_app
    from ead_sdk.serve.server import DrainingServer, make_server
    from ead_sdk.serve.state import ServeConfig, ServeState

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "create_app": "ead_sdk.serve.app",
        "DrainingServer": "ead_sdk.serve.server",
        "make_server": "ead_sdk.serve.server",
        "ServeConfig": "ead_sdk.serve.state",
        "ServeState": "ead_sdk.serve.state",
    },
)

__all__ = ["DrainingServer", "ServeConfig", "ServeState", "create_app", "make_server"]
