"""Bookkeeping shared by the SDK's vLLM logits processors: which request sits in which batch row.

vLLM keeps a persistent batch and tells each logits processor, before every step, which rows were
removed, added and moved (`vllm.v1.sample.logits_processor.BatchUpdate`). `RowTable` follows those
updates for the requests that opted in to a processor, and `HostCopies` hands per-step device
values to the host without making the step wait for the device.

This module imports neither vLLM nor torch at import time.
"""

from __future__ import annotations

import functools
import logging
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One opted-in request in the persistent batch.

    Attributes:
        key: what the processor read from the request's ``SamplingParams.extra_args``.
        prompt: the prompt token ids.
        output: vLLM's own running list of the request's output token ids (a reference: it
            grows as tokens are sampled, so ``len(output)`` is the position being computed).
    """

    key: Any
    prompt: list[int]
    output: list[int]


class RowTable:
    """The batch rows of the requests that opted in, kept in step with vLLM's batch updates.

    Args:
        select: reads a request's `SamplingParams` and returns its key, or ``None`` when the
            request did not opt in.
    """

    def __init__(self, select: Callable[[Any], Any]):
        self.select = select
        self.rows: dict[int, Row] = {}
        self.version = 0
        self._index: tuple[int, Any, Any] | None = None

    def update(self, batch_update: Any) -> list[Row]:
        """Apply one `BatchUpdate` (removed, then added, then moved); return the rows that left."""
        if batch_update is None:
            return []
        left = [self.rows.pop(i) for i in batch_update.removed if i in self.rows]
        for index, params, prompt, output in batch_update.added:
            replaced = self.rows.pop(index, None)
            if replaced is not None:
                left.append(replaced)
            key = self.select(params)
            if key is not None:
                self.rows[index] = Row(key, list(prompt or ()), output)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if direction.name == "SWAP":
                self._put(b, row_a)
                self._put(a, row_b)
            else:  # a one-way move overwrites whatever sat in b
                if row_b is not None:
                    left.append(row_b)
                self._put(b, row_a)
        self.version += 1
        return left

    def _put(self, index: int, row: Row | None) -> None:
        if row is not None:
            self.rows[index] = row

    def indices(self) -> list[int]:
        """The opted-in rows, in increasing batch order."""
        return sorted(self.rows)

    def index_tensor(self, device: Any) -> Any:
        """The opted-in rows as an int64 tensor on ``device`` (rebuilt only when the batch changed)."""
        import torch

        if self._index is None or self._index[0] != self.version or self._index[1] != device:
            tensor = torch.tensor(self.indices(), dtype=torch.int64).to(device, non_blocking=True)
            self._index = (self.version, device, tensor)
        return self._index[2]


def _refcount_floor() -> int:
    """What `sys.getrefcount` reports for a list that only a `Row` holds (this interpreter's count)."""
    row = Row(None, [], [])
    return sys.getrefcount(row.output)


_FLOOR = _refcount_floor()


def released_by_vllm(row: Row) -> bool:
    """True when vLLM no longer holds ``row``'s request: it finished or was aborted, not paused.

    A request leaves the persistent batch both when it ends and when the scheduler merely skips
    or preempts it for a while. vLLM drops its per-request state (which owns the output-token list)
    before it tells the processors that a finished request's row was removed, and keeps it for a
    paused one. So a removed row whose output list nobody but the `Row` references has ended.
    """
    return sys.getrefcount(row.output) <= _FLOOR


class HostCopies:
    """Brings per-step device tensors to the host and hands them to ``deliver``, off the step's path.

    On a CPU device the values are already on the host: with ``threaded=False`` ``deliver`` runs
    at once. On an accelerator each batch is copied with ``non_blocking=True`` and an event is
    recorded; a daemon thread waits for the event and then calls ``deliver``, so the engine's step
    never waits for the device (no host synchronisation on the step's thread).

    Args:
        deliver: called with the host (numpy) arrays and the batch's host-side metadata.
        device: the device the tensors live on.
        threaded: deliver on the background thread even on CPU (for slow consumers, e.g. a writer).
        idle: called on the thread when nothing arrived for ``idle_s`` seconds.
    """

    def __init__(
        self,
        deliver: Callable[[list[Any], Any], None],
        device: Any,
        *,
        threaded: bool,
        idle: Callable[[], None] | None = None,
        idle_s: float = 0.25,
    ):
        self.deliver = deliver
        self.idle = idle
        self.idle_s = idle_s
        self.on_cpu = getattr(device, "type", str(device)) == "cpu"
        self.threaded = threaded or not self.on_cpu
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def submit(self, tensors: list[Any], meta: Any) -> None:
        """Queue ``tensors`` (device) with ``meta`` (host) for delivery."""
        if not self.threaded:
            self.deliver([t.numpy() for t in tensors], meta)
            return
        event = None
        if not self.on_cpu:
            tensors = [t.to("cpu", non_blocking=True) for t in tensors]
            event = _record_event()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ead-sdk-vllm-host", daemon=True)
            self._thread.start()
        self._queue.put((event, tensors, meta))

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.idle_s if self.idle else None)
            except queue.Empty:
                self._guarded(self.idle)
                continue
            try:
                if item is None:
                    return
                event, tensors, meta = item
                if event is not None:
                    event.synchronize()
                self._guarded(functools.partial(self.deliver, [t.numpy() for t in tensors], meta))
            finally:
                self._queue.task_done()

    def _guarded(self, call: Callable[[], None] | None) -> None:
        """Run ``call``; a failure is logged and kept (the engine serves on without its records)."""
        if call is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            self.failure = exc
            logger.exception("ead_sdk: delivering a logits processor's values failed")

    def drain(self) -> None:
        """Wait until everything submitted so far was delivered."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Deliver what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


def _record_event() -> Any:
    """An event recorded on the current accelerator stream (the copies above were queued on it)."""
    import torch

    accelerator = torch.accelerator.current_accelerator()
    event = torch.Event(device=accelerator)
    event.record()
    return event
