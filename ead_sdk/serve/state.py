"""What a running ``ead serve`` holds: its settings, routers, tokenizer, metrics and bounds.

`ServeState.start` is where the server refuses to start: the routers are built (the policy's
model count and signal checked against every engine) and each upstream is asked for one token,
whose signal must be what the spec needs, before anything binds a port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ead_sdk.cost import CostModel
from ead_sdk.errors import EadError, ServeError, ServeRequestError
from ead_sdk.interface import Policy
from ead_sdk.serve.admission import Admission
from ead_sdk.serve.metrics import ServeMetrics
from ead_sdk.serve.routers import RouterPool
from ead_sdk.serving import EngineRequest, ServingEngine
from ead_sdk.signal_spec import SignalSpec


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings.

    Attributes:
        model_name: the model id clients send and ``/v1/models`` lists.
        max_lanes: the most lanes (prompts) generated at once; past it, 429 with ``Retry-After``.
        max_tokens: the most tokens one lane may ask for (and chat's default).
        allow_policy_override: honour a request's ``ead`` policy override.
        record_dir: record served traffic as trace streams in this folder (``None``: off).
        record_rotate_rows: rows per recording file before a new one is started.
        probe: ask each upstream for one token at start and check its signal.
        cost_model: per-model costs for the cost reports (default: the engines' parameter counts).
        upstream_timeout: seconds an upstream may stay silent mid-request before the lane fails.
    """

    model_name: str = "ead-router"
    max_lanes: int = 64
    max_tokens: int = 1024
    allow_policy_override: bool = False
    record_dir: Path | None = None
    record_rotate_rows: int = 1000
    probe: bool = True
    cost_model: CostModel | None = None
    upstream_timeout: float | None = 120.0


def policy_signal(policy: Policy) -> SignalSpec:
    """The signal ``policy`` was calibrated on (exact entropy unless its spec names another)."""
    signal = getattr(policy, "signal", None)
    if signal is None:
        signal = policy.spec().get("signal")
    return SignalSpec.from_json(signal)


async def probe_engine(engine: ServingEngine, signal: SignalSpec, prompt: Sequence[int]) -> None:
    """Ask ``engine`` for one token and check it carries ``signal``; `ServeError` naming the engine otherwise."""
    request = EngineRequest(prompt=tuple(prompt), max_tokens=1, top_k=signal.k or 0, request_id="ead-serve-probe")
    stream = engine.stream(request)
    try:
        token = await asyncio.wait_for(anext(stream), timeout=120)
    except StopAsyncIteration:
        raise ServeError(f"upstream {engine.name!r}: answered a one-token probe with no token") from None
    except (EadError, OSError, asyncio.TimeoutError) as exc:
        raise ServeError(f"upstream {engine.name!r}: the start-up probe failed ({exc})") from None
    finally:
        await stream.aclose()
    if signal.exact and token.entropy is None:
        raise ServeError(f"upstream {engine.name!r}: the spec needs the exact entropy, the upstream sent none")
    if not signal.exact and len(token.top_logprobs or ()) < (signal.k or 0):
        got = len(token.top_logprobs or ())
        raise ServeError(f"upstream {engine.name!r}: the spec needs top-{signal.k} log-probabilities, it sent {got}")


class ServeState:
    """Everything the endpoints share; build it with `start`, release it with `aclose`."""

    def __init__(self, pool: RouterPool, tokenizer: Any, config: ServeConfig, recorder: Any = None):
        self.pool = pool
        self.tokenizer = tokenizer
        self.config = config
        self.names = tuple(e.name for e in pool.engines)
        self.vocab_size = min(e.vocab_size for e in pool.engines)
        self.metrics = ServeMetrics(self.names)
        self.admission = Admission(config.max_lanes)
        self.recorder = recorder
        self.draining = False
        self.started = int(time.time())
        self.cost_model = getattr(pool.default, "cost_model", None) or _param_cost_model(pool.engines)

    @classmethod
    async def start(
        cls, engines: Sequence[ServingEngine], policy: Policy, tokenizer: Any, config: ServeConfig | None = None
    ) -> ServeState:
        """Build the routers and check the upstreams (`ServeError`/`SignalUnavailableError` on a mismatch)."""
        config = config or ServeConfig()
        if tokenizer is None:
            raise ServeError("ead serve needs the models' tokenizer (pass --tokenizer, or upstreams that have one)")
        recorder = None
        if config.record_dir is not None:
            from ead_sdk.serve.recording import ServedTrafficRecorder

            k = policy_signal(policy).k or 0
            recorder = ServedTrafficRecorder(
                config.record_dir, engines, policy, tokenizer, config.record_rotate_rows, k
            )
        served = engines if recorder is None else recorder.wrap(engines)
        pool = RouterPool(
            served,
            policy,
            allow_overrides=config.allow_policy_override,
            cost_model=config.cost_model,
            max_lanes=config.max_lanes,
            timeout=config.upstream_timeout,
        )
        if config.probe:  # on the engines themselves: the probe is not recorded
            prompt = tokenizer.encode("Hello") or [0]
            for engine in engines:
                await probe_engine(engine, policy_signal(policy), prompt)
        return cls(pool, tokenizer, config, recorder)

    def check_open(self) -> None:
        """Refuse new work while draining (503)."""
        if self.draining:
            raise ServeRequestError(
                "the server is shutting down", status=503, code="draining", kind="service_unavailable_error"
            )

    async def aclose(self) -> None:
        """Close the routers and the engines, and the recording."""
        for router in self.pool.routers():
            await router.aclose()
        for engine in self.pool.engines:
            await engine.aclose()
        if self.recorder is not None:
            self.recorder.close()


def _param_cost_model(engines: Sequence[ServingEngine]) -> CostModel | None:
    counts = [e.num_params for e in engines]
    if any(c is None for c in counts):
        return None
    return CostModel.from_param_counts(counts, [e.name for e in engines])
