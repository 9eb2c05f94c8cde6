"""Running the app on uvicorn, with a graceful drain on SIGTERM/SIGINT.

On the first signal the server stops accepting connections, answers ``/health`` and new requests
with 503 on connections still open, and lets the requests in flight finish for up to the drain
timeout; what is still running then is cancelled (each client's stream simply ends), the routers
and engines are closed, and the process exits. A second signal exits at once.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from ead_sdk.serve.app import create_app
from ead_sdk.serve.state import ServeState


class DrainingServer(uvicorn.Server):
    """A uvicorn server that marks the `ServeState` as draining as soon as it is asked to stop."""

    def __init__(self, config: uvicorn.Config, state: ServeState):
        super().__init__(config)
        self.serve_state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.serve_state.draining = True
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if captured:  # uvicorn re-raises it after the drain; a drained server exits with status 0 instead
            captured.pop()

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the server listens on, once started."""
        return [s.getsockname()[:2] for server in self.servers for s in server.sockets]


def make_server(
    state: ServeState,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    drain_timeout: float = 30.0,
    log_level: str = "info",
) -> DrainingServer:
    """A `DrainingServer` for ``state`` on ``host:port`` (``await server.serve()`` runs it)."""
    config = uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        timeout_graceful_shutdown=drain_timeout,
        log_level=log_level,
        lifespan="on",
        access_log=False,
    )
    return DrainingServer(config, state)
