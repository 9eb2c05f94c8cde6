"""Bounded concurrency: past the bound a request is refused at once (429) with a ``Retry-After``.

Queuing requests inside the server would only hide the overload from the client and its load
balancer; refusing at once lets them retry elsewhere. ``Retry-After`` is the typical time a lane
has been taking here (the median of recent lane durations), so a client that waits that long
usually finds a free slot.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from ead_sdk.errors import ServeRequestError

RECENT = 64
"""How many recent lane durations the ``Retry-After`` estimate reads."""


class Admission:
    """At most ``max_lanes`` lanes at once; `admit` takes slots or raises a 429 `ServeRequestError`.

    Args:
        max_lanes: the bound (a request with ``n`` prompts takes ``n`` slots).
        max_retry_after: the longest ``Retry-After`` (seconds) ever suggested.
    """

    def __init__(self, max_lanes: int, max_retry_after: int = 60):
        if max_lanes < 1:
            raise ValueError(f"max_lanes must be >= 1, got {max_lanes}")
        self.max_lanes = max_lanes
        self.max_retry_after = max_retry_after
        self.in_use = 0
        self._durations: deque[float] = deque(maxlen=RECENT)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the median recent lane duration, 1 at least."""
        if not self._durations:
            return 1
        return max(1, min(self.max_retry_after, math.ceil(statistics.median(self._durations))))

    def admit(self, lanes: int) -> None:
        """Take ``lanes`` slots, or raise a 429 error carrying ``Retry-After`` when they are not free."""
        if lanes > self.max_lanes:
            raise ServeRequestError(
                f"the request has {lanes} prompts; this server runs at most {self.max_lanes} at once",
                status=400,
                param="prompt",
            )
        if self.in_use + lanes > self.max_lanes:
            raise ServeRequestError(
                f"the server is at its bound of {self.max_lanes} concurrent lanes; retry later",
                status=429,
                code="server_busy",
                kind="rate_limit_error",
            )
        self.in_use += lanes

    def release(self, lanes: int, seconds_each: float | None = None) -> None:
        """Give back ``lanes`` slots; ``seconds_each`` (how long they ran) feeds `retry_after`."""
        self.in_use = max(0, self.in_use - lanes)
        if seconds_each is not None:
            self._durations.append(seconds_each)
