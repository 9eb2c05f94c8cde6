"""The server's Prometheus metrics (``/metrics``), in a registry of its own.

Counters are bumped as tokens are *sent*, so a scrape after the clients finished equals what
they received. Each app has its own `prometheus_client.CollectorRegistry`, so two servers in one
process (tests, benchmarks) never mix their counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Hand-offs re-prefill the lane on another engine: tens of milliseconds to seconds on CPU.
HANDOFF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

OUTCOMES = ("completed", "upstream_error", "cancelled", "rejected", "invalid")
"""How a request ended: answered in full, ended by an upstream fault, left by its client, refused, bad."""


class ServeMetrics:
    """Every metric ``ead serve`` exports, labelled by the models' names.

    Args:
        model_names: the ladder's models, smallest first (the ``model`` label).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_names: Sequence[str]):
        self.model_names = tuple(model_names)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ead_requests", "Requests by endpoint and outcome.", ["endpoint", "outcome"], registry=r
        )
        self.tokens = Counter(
            "ead_tokens", "Generated tokens sent to clients, by emitting model.", ["model"], registry=r
        )
        self.large_share = Gauge("ead_large_share", "Share of sent tokens emitted by the largest model.", registry=r)
        self.switches = Counter("ead_switches", "Changes of emitting model within a lane.", registry=r)
        self.catchup = Counter(
            "ead_catchup_tokens", "Tokens re-prefilled on hand-off, by model.", ["model"], registry=r
        )
        self.wasted = Counter("ead_wasted_tokens", "Tokens produced then thrown away, by model.", ["model"], registry=r)
        self.handoff = Histogram(
            "ead_handoff_latency_seconds",
            "Time from a switch to the next model's first token.",
            buckets=HANDOFF_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "ead_request_duration_seconds",
            "Wall time of answered requests.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "ead_upstream_errors", "Requests ended by an upstream fault, by engine.", ["engine"], registry=r
        )
        self.in_flight = Gauge("ead_lanes_in_flight", "Lanes being generated now.", registry=r)
        for name in self.model_names:  # every series exists from the start, at 0
            self.tokens.labels(name)
            self.catchup.labels(name)
            self.wasted.labels(name)
        self._sent = [0] * len(self.model_names)

    def sent(self, models: Sequence[int]) -> None:
        """Count tokens sent to a client, emitted by ``models`` (indices)."""
        for m in models:
            self._sent[m] += 1
            self.tokens.labels(self.model_names[m]).inc()
        total = sum(self._sent)
        if total:
            self.large_share.set(self._sent[-1] / total)

    def lane_done(
        self, switches: int, catchup: Sequence[int], wasted: Sequence[int], handoffs: Sequence[float]
    ) -> None:
        """Count a finished lane's switches, catch-up and wasted tokens and hand-off latencies."""
        self.switches.inc(switches)
        for name, c, w in zip(self.model_names, catchup, wasted, strict=False):
            self.catchup.labels(name).inc(c)
            self.wasted.labels(name).inc(w)
        for seconds in handoffs:
            self.handoff.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
