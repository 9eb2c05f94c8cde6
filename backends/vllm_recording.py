"""Record the traffic a vLLM engine serves as traces: a logits processor that changes nothing.

`TraceRecorder` is a vLLM logits processor. For each request that opts in
(``SamplingParams(extra_args={"ead_sdk.record": True})``, or a dict of task fields such as
``{"prompt_id": "q17"}``) it keeps, at every generated position, the exact entropy of the served
model's raw distribution, its top-k ids and log-probabilities and the log-probability of the token
that was drawn; when the request ends it writes one row in the project's trace format
(`ead_sdk.traces`, an Arrow IPC stream) that replay, sweeps and calibration read as they are::

    from vllm import LLM, SamplingParams
    from ead_sdk.backends.vllm_recording import RecordingOptions, TraceRecorder

    options = RecordingOptions("traces/", k=20)
    llm = LLM(model="models/large", logits_processors=[TraceRecorder], additional_config=options.additional_config())
    llm.generate(prompts, SamplingParams(max_tokens=256, extra_args=options.request_args(prompt_id="q17")))

How it stays off the engine's critical path: per step, everything is computed on the device (one
``log_softmax``, ``entr``, ``topk`` over the opted-in rows) and the tensors are kept in a list; no
value is read on the host. Every ``flush_steps`` steps, and at once when a recorded request ends,
the kept tensors are concatenated and copied to the host in one batch (``non_blocking`` plus an
event on an accelerator) and a background thread turns them into rows and writes them.

What a crash loses: a row is written the moment its request ends (``batch_rows=1``; with
``batch_rows=N`` up to ``N - 1`` finished rows wait in the writer's buffer), so a killed process
loses only the requests still running and that buffer. Read a stream left by a crash with
``read_traces(path, recover=True)`` or ``ead traces recover``.

Limits: one row per request and per model (the trace has one model: ``emitted_by`` is all 0);
vLLM's asynchronous scheduling is refused (the drawn token must be in vLLM's output list when the
next step starts); with tensor parallelism every rank would record, so record with one rank.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from ead_sdk.backends.vllm_rows import HostCopies, Row, RowTable, released_by_vllm
from ead_sdk.errors import ArgumentError, TraceError

RECORD_KEY = "ead_sdk.record"
"""The ``SamplingParams.extra_args`` key that opts a request in (``True`` or a dict of task fields)."""

CONFIG_KEY = "ead_sdk.recording"
"""The ``additional_config`` key that carries `RecordingOptions` to the engine's worker."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordingOptions:
    """Where and what `TraceRecorder` records.

    Attributes:
        directory: where each worker writes its stream, ``<model>-<time>-<pid>.arrows``.
        k: top tokens kept per position (0: none).
        model_name: the trace's model name (default: the model folder's name).
        num_params: the model's parameter count (default: counted from its safetensors headers).
        tokenizer_fingerprint: the trace's tokenizer fingerprint (default: computed from the
            engine's tokenizer, as `ead_sdk.backends.hf.tokenizer_fingerprint` does).
        batch_rows: finished rows per record batch written (1: each row at once).
        flush_steps: steps between two copies of the kept values to the host.
        fsync: also ``fsync`` each batch (survives a machine crash, not just a process crash).
    """

    directory: str
    k: int = 20
    model_name: str | None = None
    num_params: int | None = None
    tokenizer_fingerprint: str | None = None
    batch_rows: int = 1
    flush_steps: int = 32
    fsync: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", str(self.directory))
        for name, low in (("k", 0), ("batch_rows", 1), ("flush_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ArgumentError(f"RecordingOptions.{name} must be an integer >= {low}, got {value!r}")

    def additional_config(self) -> dict[str, Any]:
        """The ``additional_config`` entry for vLLM that hands these options to the worker."""
        return {CONFIG_KEY: asdict(self)}

    @classmethod
    def from_config(cls, additional_config: Any) -> RecordingOptions:
        """The options in vLLM's ``additional_config`` (``ValueError`` when absent or malformed)."""
        raw = (additional_config or {}).get(CONFIG_KEY) if isinstance(additional_config, Mapping) else None
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"TraceRecorder needs additional_config={{{CONFIG_KEY!r}: ...}}: pass "
                "RecordingOptions(...).additional_config() to vLLM"
            )
        try:
            return cls(**raw)
        except (TypeError, ArgumentError) as exc:
            raise ValueError(f"additional_config[{CONFIG_KEY!r}]: {exc}") from None

    @staticmethod
    def request_args(**fields: Any) -> dict[str, Any]:
        """``SamplingParams.extra_args`` that opt one request in, with optional task fields."""
        kept = {k: v for k, v in fields.items() if v is not None}
        return {RECORD_KEY: kept or True}


def read_opt_in(params: Any) -> dict[str, Any] | None:
    """The task fields of a request that opted in (``{}`` for ``True``), or ``None``; ``ValueError`` if malformed."""
    value = (getattr(params, "extra_args", None) or {}).get(RECORD_KEY)
    if value is None or value is False:
        return None
    if value is True:
        fields: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        fields = dict(value)
        try:
            json.dumps(fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{RECORD_KEY}: task fields must be JSON-able ({exc})") from None
    else:
        raise ValueError(f"{RECORD_KEY} must be true or a dict of task fields, got {value!r:.60}")
    names = ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens")
    fields["sampling"] = {n: getattr(params, n, None) for n in names}
    return fields


def safetensors_param_count(folder: str | os.PathLike[str]) -> int | None:
    """A model folder's parameter count from its safetensors headers (no tensor is read), or ``None``."""
    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                total += int(np.prod(info["shape"], dtype=np.int64))
    return total or None


@dataclass
class _Flush:
    """Host-side metadata of one copy to the host, aligned with its tensors' rows."""

    step_uids: list[int]
    step_pos: list[int]
    token_uids: list[int]
    token_pos: list[int]
    seq: int
    left: list[tuple[int, Row]]


class _Requests:
    """Request numbers, and the requests that left the batch, shared by the step's thread and the copy thread.

    A request leaves vLLM's batch when it ends and also when the scheduler pauses it. Rows that
    left are parked; the copy thread writes a parked row once every value the step's thread kept
    for it was delivered and vLLM let go of the request (`released_by_vllm`), and drops it from
    the parking when the request came back into the batch meanwhile.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uids: dict[int, int] = {}  # id(vLLM's output list) -> request number (read lock-free by the step)
        self.away: dict[int, int] = {}  # request number -> the flush that carried it out of the batch
        self.parked: dict[int, tuple[int, Row]] = {}  # request number -> (that flush, its row), once delivered
        self._next = 0

    def number(self, row: Row) -> None:
        """Give a row in the batch its number (a new request) or take it off the parking (it came back)."""
        with self.lock:
            uid = self.uids.get(id(row.output))
            if uid is None:
                self.uids[id(row.output)] = self._next
                self._next += 1
            else:
                self.away.pop(uid, None)

    def leave(self, uids: list[int], flush: int) -> None:
        with self.lock:
            for uid in uids:
                self.away[uid] = flush

    def park(self, left: list[tuple[int, Row]], flush: int) -> None:
        with self.lock:
            for uid, row in left:
                self.parked[uid] = (flush, row)

    def ended(self) -> list[tuple[int, Row]]:
        """The parked requests that are over (vLLM dropped them), removed from the bookkeeping."""
        out = []
        with self.lock:
            for uid, (flush, row) in list(self.parked.items()):
                current = self.away.get(uid)
                if current is None:  # back in the batch
                    del self.parked[uid]
                elif current == flush and released_by_vllm(row):
                    del self.parked[uid], self.away[uid], self.uids[id(row.output)]
                    out.append((uid, row))
        return out


class _Assembler:
    """Runs on the copy thread: files each position's values under its request, writes ended requests."""

    def __init__(self, options: RecordingOptions, engine: Mapping[str, Any], requests: _Requests):
        self.options = options
        self.engine = dict(engine)
        self.requests = requests
        self.steps: dict[int, dict[int, tuple[Any, Any, Any]]] = {}
        self.tokens: dict[int, dict[int, float]] = {}
        self.writer: Any = None
        self.rows_written = 0
        self.rows_skipped = 0

    def deliver(self, arrays: list[np.ndarray], batch: _Flush) -> None:
        h, top_lp, top_ids, token_lp = arrays
        for j, (uid, pos) in enumerate(zip(batch.step_uids, batch.step_pos, strict=True)):
            self.steps.setdefault(uid, {})[pos] = (h[j], top_lp[j], top_ids[j])  # a re-run position overwrites
        for j, (uid, pos) in enumerate(zip(batch.token_uids, batch.token_pos, strict=True)):
            self.tokens.setdefault(uid, {})[pos] = float(token_lp[j])
        self.requests.park(batch.left, batch.seq)
        self.sweep()

    def sweep(self) -> None:
        """Write the parked requests that are over."""
        for uid, row in self.requests.ended():
            self._write(uid, list(row.prompt), list(row.output), row.key)

    def _write(self, uid: int, prompt: list[int], output: list[int], fields: dict[str, Any]) -> None:
        from ead_sdk.traces import SequenceTrace

        steps, tokens = self.steps.pop(uid, {}), self.tokens.pop(uid, {})
        t, k = len(output), self.options.k
        missing = [p for p in range(t) if p not in steps or p not in tokens]
        if not output or missing:
            self.rows_skipped += 1
            logger.warning("ead_sdk recorder: request %d not recorded (no values for positions %s)", uid, missing[:5])
            return
        seq = SequenceTrace.build(
            prompt_ids=prompt,
            token_ids=output,
            emitted_by=np.zeros(t, np.int8),
            entropy=np.array([steps[p][0] for p in range(t)], np.float32).reshape(t, 1),
            token_logprob=np.array([tokens[p] for p in range(t)], np.float32).reshape(t, 1),
            top_ids=np.stack([steps[p][2] for p in range(t)]).reshape(t, 1, k).astype(np.int32) if k else None,
            top_logprobs=np.stack([steps[p][1] for p in range(t)]).reshape(t, 1, k) if k else None,
            fields=fields,
        )
        try:
            self._open().write(seq)
            self.rows_written += 1
        except TraceError as exc:
            self.rows_skipped += 1
            logger.warning("ead_sdk recorder: request %d not recorded: %s", uid, exc)

    def _open(self) -> Any:
        if self.writer is None:
            from ead_sdk.traces import FORMAT_VERSION, TraceMeta, TraceWriter

            meta = TraceMeta(
                format_version=FORMAT_VERSION,
                model_names=(self.engine["model_name"],),
                param_counts=(self.engine["num_params"],),
                vocab_size=self.engine["vocab_size"],
                tokenizer_fingerprint=self.options.tokenizer_fingerprint or _fingerprint(self.engine["tokenizer"]),
                k=self.options.k,
                generation={"recorded_by": "ead_sdk.backends.vllm_recording", **self.engine["generation"]},
            )
            directory = Path(self.options.directory)
            directory.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            path = directory / f"{self.engine['model_name']}-{stamp}-{os.getpid()}.arrows"
            self.writer = TraceWriter(path, meta, batch_rows=self.options.batch_rows, fsync=self.options.fsync)
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fingerprint(tokenizer: str) -> str:
    from transformers import AutoTokenizer

    from ead_sdk.backends.hf import tokenizer_fingerprint

    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(tokenizer, local_files_only=True))


def _describe(vllm_config: Any, options: RecordingOptions) -> dict[str, Any]:
    """What the trace metadata says of the served model."""
    import vllm

    model = vllm_config.model_config
    name = options.model_name or Path(str(model.model)).name
    params = options.num_params or safetensors_param_count(model.model)
    if not params:
        raise ValueError(f"TraceRecorder: no safetensors in {model.model}; give RecordingOptions(num_params=...)")
    return {
        "model_name": name,
        "num_params": int(params),
        "vocab_size": int(model.get_vocab_size()),
        "tokenizer": str(model.tokenizer),
        "generation": {"engine": f"vllm {vllm.__version__}", "model": str(model.model), "dtype": str(model.dtype)},
    }


class TraceRecorder(LogitsProcessor):
    """A vLLM logits processor that records opted-in requests as trace rows and returns the logits unchanged.

    Load it with ``logits_processors=[TraceRecorder]`` and
    ``additional_config=RecordingOptions(...).additional_config()``; see the module's docstring.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.options = RecordingOptions.from_config(vllm_config.additional_config)
        if getattr(vllm_config.scheduler_config, "async_scheduling", False):
            raise ValueError("TraceRecorder needs async_scheduling=False (it reads each drawn token at the next step)")
        self.table = RowTable(read_opt_in)
        self.requests = _Requests()
        self.uids = self.requests.uids
        self.kept: list[tuple[Any, ...]] = []
        self.prev: tuple[Any, dict[int, int], dict[int, int]] | None = None
        self.steps = 0
        self.flushes = 0
        self.assembler = _Assembler(self.options, _describe(vllm_config, self.options), self.requests)
        self.host = HostCopies(self.assembler.deliver, device, threaded=True, idle=self.assembler.sweep)
        self.device = device
        atexit.register(self.close)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        read_opt_in(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it must see greedy batches too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        left = self.table.update(batch_update)
        if batch_update is not None:
            for row in self.table.rows.values():
                self.requests.number(row)
        self._keep_token_logprobs(left)
        self.steps += 1
        if left or (self.kept and self.steps % self.options.flush_steps == 0):
            self._flush(left)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = self.table.rows
        if not rows:
            return logits
        order = self.table.indices()
        x = logits if len(order) == logits.shape[0] else logits.index_select(0, self.table.index_tensor(logits.device))
        logp = torch.log_softmax(x.float(), -1)
        h = torch.special.entr(logp.exp()).sum(-1)  # ead_sdk.signals.entropy's formula, on the log-softmax
        k = self.options.k
        top_lp, top_ids = logp.topk(k, -1) if k else (logp[:, :0], torch.zeros_like(logp[:, :0], dtype=torch.int64))
        uids = [self.uids[id(rows[i].output)] for i in order]
        positions = [len(rows[i].output) for i in order]
        self.kept.append(("step", h, top_lp, top_ids, uids, positions))
        self.prev = (logp, {u: s for s, u in enumerate(uids)}, dict(zip(uids, positions, strict=True)))
        return logits

    def _keep_token_logprobs(self, left: list[Row]) -> None:
        """Keep, on the device, the log-probability of each token drawn at the last step."""
        if self.prev is None:
            return
        logp, slot_of, pos_of = self.prev
        self.prev = None
        slots, tokens, uids, positions = [], [], [], []
        for row in [*self.table.rows.values(), *left]:
            uid = self.uids[id(row.output)]
            if uid in slot_of and len(row.output) > pos_of[uid]:
                slots.append(slot_of[uid])
                tokens.append(row.output[pos_of[uid]])
                uids.append(uid)
                positions.append(pos_of[uid])
        if slots:
            index = torch.tensor([slots, tokens], dtype=torch.int64).to(logp.device, non_blocking=True)
            self.kept.append(("token", logp[index[0], index[1]], uids, positions))

    def _flush(self, left: list[Row]) -> None:
        """Copy the kept values to the host in one batch, with the rows that left the batch."""
        steps = [e for e in self.kept if e[0] == "step"]
        tokens = [e for e in self.kept if e[0] == "token"]
        k, device = self.options.k, self.device

        def cat(parts: list[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(parts) if parts else torch.zeros(shape, dtype=dtype, device=device)

        tensors = [
            cat([e[1] for e in steps], (0,), torch.float32),
            cat([e[2] for e in steps], (0, k), torch.float32),
            cat([e[3] for e in steps], (0, k), torch.int64),
            cat([e[1] for e in tokens], (0,), torch.float32),
        ]
        batch = _Flush(
            step_uids=[u for e in steps for u in e[4]],
            step_pos=[p for e in steps for p in e[5]],
            token_uids=[u for e in tokens for u in e[2]],
            token_pos=[p for e in tokens for p in e[3]],
            seq=self.flushes,
            left=[(self.uids[id(r.output)], r) for r in left],
        )
        self.requests.leave([uid for uid, _ in batch.left], self.flushes)
        self.flushes += 1
        self.kept = []
        self.host.submit(tensors, batch)

    def close(self) -> None:
        """Write what was kept, wait for the copy thread, and close the stream (idempotent)."""
        if self.kept:
            self._flush([])
        self.host.close()
        self.assembler.sweep()
        self.assembler.close()


def with_scored_models(traces: Any, backend: Any) -> Any:
    """The recorded trace with ``backend``'s models added, each scored teacher-forced along every row.

    A recording holds one model: the one that served the traffic. Replay and calibration of a
    routing policy need every model's signals along each trajectory, so the other (smaller) models
    score the recorded tokens here, in one forward per row (`BatchSession.score`). The result lists
    ``backend``'s models first, then the recorded one (smallest first: give the smaller models);
    ``emitted_by`` names the recorded model. Nothing is re-generated: the trajectory stays the served one.

    Args:
        traces: a one-model `TraceSet` read from a recording.
        backend: an `ead_sdk.Backend` (e.g. `TransformersBackend`) on the same tokenizer.

    Raises:
        TraceError: the trace is not a one-model recording, or the vocabularies or tokenizers differ.
    """
    from ead_sdk.backend import DecodeRequest
    from ead_sdk.traces import SequenceTrace, TraceMeta, TraceSet

    meta = traces.meta
    if meta.num_models != 1:
        raise TraceError(f"{traces.source}: a recording holds one model; this trace has {meta.num_models}")
    if backend.vocab_size != meta.vocab_size:
        raise TraceError(f"{traces.source}: vocabulary {meta.vocab_size}, the backend's is {backend.vocab_size}")
    theirs = getattr(backend, "tokenizer_fingerprint", "")
    if theirs and meta.tokenizer_fingerprint and theirs != meta.tokenizer_fingerprint:
        raise TraceError(f"{traces.source}: recorded with another tokenizer ({meta.tokenizer_fingerprint} vs {theirs})")
    seqs, k, m = traces.sequences(), int(meta.k), backend.num_models
    request = DecodeRequest(prompts=tuple(tuple(s.prompt_ids.tolist()) for s in seqs), max_new_tokens=1)
    lanes = np.arange(len(seqs))
    with backend.start(request) as session:
        scored = [session.score(i, lanes, [s.token_ids for s in seqs], k) for i in range(m)]
    out = []
    for row, seq in enumerate(seqs):
        recs = [scored[i][row] for i in range(m)]
        out.append(
            SequenceTrace.build(
                prompt_ids=seq.prompt_ids,
                token_ids=seq.token_ids,
                emitted_by=np.full(seq.length, m, np.int8),
                entropy=np.column_stack([r.entropy for r in recs] + [seq.entropy[:, 0]]),
                token_logprob=np.column_stack([r.token_logprob for r in recs] + [seq.token_logprob[:, 0]]),
                top_ids=np.stack([r.top_ids for r in recs] + [seq.top_ids[:, 0]], 1) if k else None,
                top_logprobs=np.stack([r.top_logprobs for r in recs] + [seq.top_logprobs[:, 0]], 1) if k else None,
                fields=seq.fields,
            )
        )
    scored_meta = TraceMeta(
        format_version=meta.format_version,
        model_names=(*backend.model_names, *meta.model_names),
        param_counts=(*backend.param_counts, *meta.param_counts),
        vocab_size=meta.vocab_size,
        tokenizer_fingerprint=meta.tokenizer_fingerprint,
        k=k,
        generation={**meta.generation, "teacher_forced": list(backend.model_names)},
    )
    return TraceSet.from_sequences(scored_meta, out, source=f"{traces.source} (+ scored)")
