"""Offline engines: where replay, sweeps and calibration run, with the options that belong there.

`LocalEngine` runs in this process; `RayEngine` runs on Ray Data, from one machine to a cluster.
`replay`, `sweep` and `calibrate` take either as ``engine=`` and return the same result type
with identical figures, whichever ran; only the engine's own options differ.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ead_sdk.errors import ArgumentTypeError, EngineError

DEFAULT_BATCH_ROWS = 1024
"""Sequences per batch when a trace is streamed from disk or sent to Ray tasks."""


def _check_batch_rows(engine: str, batch_rows: object) -> None:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, numbers.Integral) or batch_rows < 1:
        raise EngineError(f"{engine}: batch_rows must be an integer >= 1, got {batch_rows!r}")


@dataclass(frozen=True)
class LocalEngine:
    """Replay in this process.

    Args:
        threads: threads per replay, each replaying its own block of lanes (numpy releases the GIL
            inside its array loops); ``None`` is `ead_sdk.simulators.replay.default_threads`
            (at most 2). Small replays stay on one thread; results do not depend on it.
        batch_rows: sequences per batch when a sweep streams a trace path from disk.
    """

    threads: int | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS

    def __post_init__(self) -> None:
        threads = self.threads
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1
        ):
            raise EngineError(f"LocalEngine: threads must be an integer >= 1, got {threads!r}")
        _check_batch_rows("LocalEngine", self.batch_rows)


@dataclass(frozen=True)
class RayEngine:
    """Replay on Ray Data: each task replays ``batch_rows`` whole sequences (needs the ``ray`` extra).

    Args:
        address: the cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``...);
            default: ``RAY_ADDRESS`` when set, else a local instance on this machine's CPUs.
        batch_rows: sequences per Ray task.
    """

    address: str | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, str):
            raise EngineError(f"RayEngine: address must be a string, got {self.address!r}")
        _check_batch_rows("RayEngine", self.batch_rows)


Engine = LocalEngine | RayEngine


def as_engine(engine: Engine | None) -> Engine:
    """``engine`` itself, or a default `LocalEngine` for ``None``; anything else is refused."""
    if engine is None:
        return LocalEngine()
    if isinstance(engine, (LocalEngine, RayEngine)):
        return engine
    hint = ""
    if engine in ("local", "ray"):
        hint = "; engines are objects now: LocalEngine(threads=...) or RayEngine(address=..., batch_rows=...)"
    raise ArgumentTypeError(f"engine must be a LocalEngine or a RayEngine, got {engine!r}{hint}")
