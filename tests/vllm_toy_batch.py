"""A stand-in for vLLM's worker loop that drives an SDK logits processor as vLLM does, without a model.

It keeps vLLM's per-request state (which owns each request's output-token list), a persistent
batch whose changes reach the processor as vLLM `BatchUpdate`s (removed, added, moved), random
logits per step, and the sampler: greedy or seeded random draws, with optional partial-prefill
steps whose draw is discarded. It records what a correct recorder must write, so tests compare.

Run as a script it serves requests forever with a `TraceRecorder` and prints ``written N`` each
time N rows are known to be on disk (the crash test kills it mid-way).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

VOCAB = 40


@dataclass
class ToyRequest:
    """One request: its prompt, length, and what it saw (position -> logits row, token)."""

    number: int
    prompt: list[int]
    length: int
    extra_args: dict | None
    partial_steps: int = 0  # steps whose draw is discarded before the first token (a chunked prefill)
    abort_after: int | None = None  # the client goes away after this many tokens
    seen: dict[int, np.ndarray] = field(default_factory=dict)


def fake_vllm_config(options: Any, vocab: int = VOCAB) -> SimpleNamespace:
    model = SimpleNamespace(model="/models/toy", tokenizer="/models/toy", dtype="float32", get_vocab_size=lambda: vocab)
    return SimpleNamespace(
        additional_config=options.additional_config(),
        scheduler_config=SimpleNamespace(async_scheduling=False),
        model_config=model,
    )


class ToyWorker:
    """vLLM's worker loop, reduced to what a logits processor sees."""

    def __init__(self, processor: Any, seed: int = 0, greedy: bool = True, guard: Any = None):
        self.processor = processor
        self.guard = guard  # a context manager around the processor's calls (e.g. forbid_host_sync)
        self.state: dict[int, list[int]] = {}  # vLLM's per-request state: request -> output list
        self.requests: dict[int, ToyRequest] = {}
        self.slots: list[int | None] = []
        self.waiting: list[ToyRequest] = []
        self.paused: set[int] = set()
        self.gen = torch.Generator().manual_seed(seed)
        self.greedy = greedy
        self.ended: list[ToyRequest] = []
        self._removed: list[int] = []

    def submit(self, request: ToyRequest) -> None:
        self.requests[request.number] = request
        self.state[request.number] = []
        self.waiting.append(request)

    def pause(self, number: int) -> None:
        """Take a running request out of the batch (vLLM keeps its state)."""
        self._remove_slot(number)
        self.paused.add(number)

    def resume(self, number: int) -> None:
        self.paused.discard(number)
        self.waiting.append(self.requests[number])

    def _remove_slot(self, number: int) -> None:
        index = self.slots.index(number)
        self.slots[index] = None
        self._removed.append(index)

    def _batch_update(self) -> BatchUpdate | None:
        added = []
        for request in self.waiting:
            free = [i for i, s in enumerate(self.slots) if s is None]
            index = free[0] if free else len(self.slots)
            if index == len(self.slots):
                self.slots.append(None)
            self.slots[index] = request.number
            added.append(
                (index, SimpleNamespace(extra_args=request.extra_args), request.prompt, self.state[request.number])
            )
        self.waiting = []
        moved = []
        while self.slots and self.slots[-1] is None:
            self.slots.pop()
        while None in self.slots:
            hole, last = self.slots.index(None), len(self.slots) - 1
            self.slots[hole] = self.slots.pop()
            moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            while self.slots and self.slots[-1] is None:
                self.slots.pop()
        if len(self.slots) >= 2 and int(torch.randint(0, 3, (1,), generator=self.gen)) == 0:
            self.slots[0], self.slots[1] = self.slots[1], self.slots[0]
            moved.append((0, 1, MoveDirectionality.SWAP))
        removed, self._removed = self._removed, []
        if not (removed or added or moved):
            return None
        return BatchUpdate(batch_size=len(self.slots), removed=removed, added=added, moved=moved)

    def step(self) -> None:
        """One engine step: batch update, logits, the processor, the sampler, bookkeeping."""
        update = self._batch_update()
        with self.guard() if self.guard else contextlib.nullcontext():
            self.processor.update_state(update)
        if not self.slots:
            return
        logits = torch.randn(len(self.slots), VOCAB, generator=self.gen) * 3
        before = logits.clone()
        with self.guard() if self.guard else contextlib.nullcontext():
            out = self.processor.apply(logits)
        assert out is logits and torch.equal(out, before), "the processor changed the logits"
        if self.greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen)[:, 0]
        for row, number in enumerate(list(self.slots)):
            self._book(self.requests[number], logits[row].numpy().copy(), int(tokens[row]))

    def _book(self, request: ToyRequest, row: np.ndarray, token: int) -> None:
        output = self.state[request.number]
        request.seen[len(output)] = row  # a discarded (partial prefill) step is seen again
        if request.partial_steps:
            request.partial_steps -= 1
            return
        output.append(token)
        done = len(output) >= request.length
        if done or (request.abort_after is not None and len(output) >= request.abort_after):
            self._remove_slot(request.number)
            del self.state[request.number]  # vLLM drops the state of an ended request
            self.ended.append(request)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


def _serve_forever(directory: str) -> None:
    """The crash test's child: serve requests, print how many rows are on disk."""
    from ead_sdk.backends.vllm_recording import RecordingOptions, TraceRecorder

    options = RecordingOptions(directory, k=3, model_name="toy", num_params=1000, tokenizer_fingerprint="toy")
    recorder = TraceRecorder(fake_vllm_config(options), torch.device("cpu"), False)
    worker = ToyWorker(recorder)
    number = 0
    while True:
        while len(worker.slots) + len(worker.waiting) < 3:
            worker.submit(ToyRequest(number, [1, 2, 3], 4 + number % 5, {"ead_sdk.record": {"sequence_id": number}}))
            number += 1
        worker.step()
        recorder.host.drain()
        print(f"written {recorder.assembler.rows_written}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    _serve_forever(sys.argv[1])
