"""`LlamaCppEngine`: a GGUF model run in process by llama.cpp (``llama-cpp-python``), as a `ServingEngine`.

The signal is exact: after each forward the adapter reads the one logits row llama.cpp's sampler
reads next (``llama_get_logits_ith(ctx, -1)``; the context is made with ``logits_all=False``) and
computes the entropy of the full distribution, the drawn token's log-probability and the top-k
from it. ``logits_all=True`` would give the same row but makes llama.cpp compute a vocabulary-wide
output row for every prompt token and keep an ``n_ctx x vocab`` float32 table per context.

llama.cpp is synchronous: each request runs in a worker thread (llama.cpp releases the GIL), on
one of ``instances`` contexts. A context holds one sequence, so an engine serves at most
``instances`` requests at a time; the others wait in order. There is no batching across requests.
A request runs at most ``lookahead`` forwards (default 1) ahead of its reader, so closing the
stream stops it within that many forwards of the last token handed out. A new request reuses the
key/value cache of the longest prompt prefix a free context already holds (a lane that comes back
to this engine re-reads only the tokens it missed, if no other request used the context since).

llama.cpp's logits for a token depend slightly on whether it was read alone (a decode step) or in
a batch of two or more (a prompt, a catch-up): different kernels. A continuation after a reused
prefix therefore need not repeat an uninterrupted run bit for bit; greedy picks can differ at
near-ties. ``prefix_cache=False`` makes every request start from an empty cache.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk.backend import Sampling
from ead_sdk.errors import ArgumentError, ArgumentTypeError, BackendError, EngineRequestError, UpstreamError
from ead_sdk.serving import EngineRequest, EngineSignals, EngineToken, ServingEngine

_END = object()
_LOAD_LOCK = threading.Lock()


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError("LlamaCppEngine needs llama-cpp-python: pip install 'ead-sdk[llamacpp]'") from exc
    return llama_cpp


def load_llama(model_path: str | Path, *, extra_buffers: bool = False, **kwargs: Any) -> Any:
    """A ``llama_cpp.Llama`` on ``model_path`` (``kwargs`` go to it), with llama.cpp's extra weight buffers on or off.

    The extra buffers (llama.cpp's ``use_extra_bufts``, its ``--no-repack`` switch) hold weights in
    repacked layouts for the CPU's widest kernels, AMX among them. A build made on a CPU that
    advertises AMX dies with SIGILL at the first matrix product where the OS does not grant AMX
    state (some containers and sandboxes), and a signal cannot be caught: so they are off unless
    asked for. llama-cpp-python has no argument for it; its default model parameters are patched
    for the duration of the load, under a lock.
    """
    lib = _import_llama_cpp()
    if extra_buffers:
        return lib.Llama(model_path=str(model_path), **kwargs)
    low = lib.llama_cpp
    with _LOAD_LOCK:
        default = low.llama_model_default_params
        if not any(name == "use_extra_bufts" for name, *_ in default()._fields_):
            raise BackendError("this llama-cpp-python cannot turn extra buffers off: pass extra_buffers=True")

        def without_extra_buffers() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = without_extra_buffers
        try:
            return lib.Llama(model_path=str(model_path), **kwargs)
        finally:
            low.llama_model_default_params = default


def row_signals(logits: np.ndarray, token: int, top_k: int = 0) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Entropy (nats), ``token``'s log-probability and the top-``k`` ids/log-probabilities of one logits row.

    The raw row (no warper applied), in llama.cpp's float32: exponentials and the entropy's dot
    product in float32, the normaliser summed in float64 (within 1e-5 nats of a float64
    computation; ten times faster on a 49k vocabulary). Top ids come most likely first, ties by
    ascending id.

    Raises:
        ValueError: the row holds NaN or infinite logits.
    """
    x = np.asarray(logits, dtype=np.float32)
    top = float(x.max())
    with np.errstate(invalid="ignore"):  # NaN/inf rows end as a NaN entropy, refused below
        z = x - np.float32(top)
        e = np.exp(z)
        total = float(e.sum(dtype=np.float64))
        log_total = math.log(total) if total > 0 else math.nan
        h = log_total - float(np.dot(e, z)) / total
    if not math.isfinite(h):
        raise ValueError("the logits row holds NaN or infinite values")
    normaliser = top + log_total
    ids = np.empty(0, dtype=np.int64)
    if top_k:
        ids = np.argpartition(x, -top_k)[-top_k:]
        kth = x[ids].min()
        if np.count_nonzero(x >= kth) > top_k:  # ties at the k-th value: the lowest ids stay
            above = np.flatnonzero(x > kth)
            ids = np.concatenate([above, np.flatnonzero(x == kth)[: top_k - above.size]])
        ids = ids[np.lexsort((ids, -x[ids]))]
    return max(h, 0.0), float(x[token]) - normaliser, ids, x[ids].astype(np.float64) - normaliser


class LlamaCppTokenizer:
    """llama.cpp's own tokenizer for a loaded model, with the calls the SDK makes of a transformers one."""

    def __init__(self, llm: Any):
        self._llm = llm
        self.eos_token_id = int(llm.token_eos())

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in it (``<|im_end|>``) are parsed as such."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids`` (an incomplete UTF-8 sequence at the end decodes to U+FFFD)."""
        data = self._llm.detokenize([int(i) for i in ids], special=not skip_special_tokens)
        return data.decode("utf-8", errors="replace")

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


class _Channel:
    """Hands tokens from the worker thread to the stream and carries the cancellation.

    The worker takes one credit per token before computing it; the reader gives one each time it
    asks for a token, and ``lookahead`` are given up front.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, lookahead: int):
        self._loop = loop
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._demand = threading.Semaphore(lookahead)
        self.cancelled = threading.Event()
        self.reason: BaseException | None = None

    def wait_demand(self) -> bool:
        """Worker side: block until it may compute one more token; False once the stream is closed."""
        self._demand.acquire()
        return not self.cancelled.is_set()

    def put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.cancelled.set()

    async def get(self) -> Any:
        self._demand.release()
        return await self._items.get()

    def cancel(self, reason: BaseException | None = None) -> None:
        """Stop the worker at its next token; ``reason`` is raised to the consumer if it still listens."""
        if reason is not None and not self.cancelled.is_set():
            self.reason = reason
        self.cancelled.set()
        self._demand.release()


def _common_prefix(held: np.ndarray, prompt: Sequence[int]) -> int:
    n = min(len(held), len(prompt))
    differ = np.flatnonzero(held[:n] != np.asarray(prompt[:n]))
    return int(differ[0]) if differ.size else n


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"LlamaCppEngine: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ArgumentError(f"LlamaCppEngine: {name} must be >= 1, got {value}")
    return value


class LlamaCppEngine(ServingEngine):
    """A local GGUF model served in process by llama.cpp, with the exact entropy of every token.

    Args:
        model_path: the ``.gguf`` file.
        name: a label for messages and reports (default: the file's stem).
        threads: CPU threads llama.cpp uses per context, for prompt and decode alike.
        n_ctx: the context size in tokens; a request's prompt plus ``max_tokens`` must fit in it.
        seed: seeds the per-request seeds of sampled requests that bring none of their own.
        instances: llama.cpp contexts, i.e. requests served at the same time (each loads the model).
        n_batch: the most prompt tokens llama.cpp evaluates in one call.
        prefix_cache: reuse the cached prefix a context shares with a new request's prompt.
        extra_buffers: llama.cpp's repacked weight layouts (and AMX kernels), see `load_llama`.
        lookahead: forwards a request may run ahead of its reader. At 1 (the default) the next
            token is computed while the reader handles the last one; a stream closed at a token
            has then spent at most one forward past it. At 0 nothing runs before it is asked for.

    Attributes:
        prompt_tokens_evaluated: prompt tokens llama.cpp has read over all requests.
        prompt_tokens_reused: prompt tokens served from a context's cache instead.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        threads: int = 1,
        n_ctx: int = 2048,
        seed: int = 0,
        instances: int = 1,
        n_batch: int = 512,
        prefix_cache: bool = True,
        extra_buffers: bool = False,
        lookahead: int = 1,
    ):
        path = Path(model_path)
        if not path.is_file():
            raise ArgumentError(f"LlamaCppEngine: model_path {str(path)!r} is not a file")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ArgumentError(f"LlamaCppEngine: seed must be an integer in [0, 2**63), got {seed!r:.40}")
        self.name = name if name is not None else path.stem
        self.threads = _positive_int(threads, "threads")
        self.n_ctx = _positive_int(n_ctx, "n_ctx")
        self.instances = _positive_int(instances, "instances")
        self.prefix_cache = bool(prefix_cache)
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ArgumentError(f"LlamaCppEngine: lookahead must be an int >= 0, got {lookahead!r:.40}")
        self.lookahead = lookahead
        self.model_path = path
        self._lib = _import_llama_cpp()
        n_batch = min(_positive_int(n_batch, "n_batch"), self.n_ctx)
        self._models = [self._load(path, n_batch, bool(extra_buffers)) for _ in range(self.instances)]
        first = self._models[0]
        self.vocab_size = int(first.n_vocab())
        self.num_params = int(self._lib.llama_model_n_params(first.model))
        self._vocab = self._lib.llama_model_get_vocab(first.model)
        self._tokenizer = LlamaCppTokenizer(first)
        self._free = list(self._models)
        self._lock = threading.Lock()
        self._seeds = np.random.default_rng(seed)
        self._channels: set[_Channel] = set()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(self.instances, thread_name_prefix="llama.cpp")
        self.prompt_tokens_evaluated = 0
        self.prompt_tokens_reused = 0

    def _load(self, path: Path, n_batch: int, extra_buffers: bool) -> Any:
        try:
            return load_llama(
                path,
                extra_buffers=extra_buffers,
                n_ctx=self.n_ctx,
                n_batch=n_batch,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(f"LlamaCppEngine: llama.cpp could not load {str(path)!r}: {exc}") from exc

    def signals(self) -> EngineSignals:
        return EngineSignals(exact=True, max_k=self.vocab_size)

    @property
    def tokenizer(self) -> LlamaCppTokenizer:
        """llama.cpp's own tokenizer for the model."""
        return self._tokenizer

    def __repr__(self) -> str:
        return f"LlamaCppEngine({str(self.model_path)!r}, name={self.name!r}, instances={self.instances})"

    # -- one request ----------------------------------------------------------------------
    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        return self._stream(request)

    async def _stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        self._check(request)
        channel = _Channel(asyncio.get_running_loop(), self.lookahead)
        seed = self._request_seed(request.sampling)
        with self._lock:
            if self._pool is None:
                raise UpstreamError(f"engine {self.name!r} is closed", engine=self.name)
            self._channels.add(channel)
            job = self._pool.submit(self._serve, request, seed, channel)
        try:
            while (item := await channel.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            channel.cancel()
            if not job.cancel():  # a job still waiting never starts; a running one stops at its next token
                await asyncio.wait([asyncio.wrap_future(job)])
            with self._lock:
                self._channels.discard(channel)

    def _request_seed(self, sampling: Sampling) -> int:
        """llama.cpp's 32-bit sampler seed: mixed from the request's seed, else drawn from the engine's."""
        if not sampling.do_sample:
            return 0
        if sampling.seed is None:
            with self._lock:
                return int(self._seeds.integers(2**32))
        return int(np.random.SeedSequence(sampling.seed).generate_state(1)[0])

    def _check(self, request: EngineRequest) -> None:
        """Refuse what this engine cannot run, before it queues (`EngineRequestError`)."""
        name, where = self.name, f"engine {self.name!r}, request {request.request_id or '(no id)'}"
        prompt, max_tokens, top_k = request.prompt, request.max_tokens, request.top_k
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise EngineRequestError(f"{where}: max_tokens must be an int >= 1, got {max_tokens!r:.40}", engine=name)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= self.vocab_size:
            raise EngineRequestError(
                f"{where}: top_k must be an int in [0, {self.vocab_size}], got {top_k!r:.40}", engine=self.name
            )
        if not prompt:
            raise EngineRequestError(f"{where}: the prompt is empty (give at least one token id)", engine=self.name)
        for field, ids in (("prompt", prompt), ("stop_token_ids", request.stop_token_ids)):
            bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, (int, np.integer))), None)
            if bad is None:
                bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise EngineRequestError(
                    f"{where}: {field} holds {bad!r:.40}, not a token id in [0, {self.vocab_size})", engine=self.name
                )
        if len(prompt) + max_tokens > self.n_ctx:
            raise EngineRequestError(
                f"{where}: prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                f"{self.n_ctx} tokens; build the engine with a larger n_ctx",
                engine=self.name,
            )
        if request.sampling.do_sample and request.sampling.top_h is not None:
            raise EngineRequestError(f"{where}: llama.cpp has no top-H sampler (sampling.top_h)", engine=self.name)

    # -- the worker thread ----------------------------------------------------------------
    def _serve(self, request: EngineRequest, seed: int, channel: _Channel) -> None:
        try:
            if not channel.cancelled.is_set():
                llm = self._checkout(request.prompt)
                try:
                    self._decode(llm, request, seed, channel)
                except Exception as exc:
                    llm.reset()  # what the context holds is unknown now: start it afresh next time
                    channel.put(self._upstream_error(exc, request))
                finally:
                    with self._lock:
                        self._free.append(llm)
            if channel.reason is not None:
                channel.put(channel.reason)
        finally:
            channel.put(_END)

    def _upstream_error(self, exc: Exception, request: EngineRequest) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        where = f"engine {self.name!r}, request {request.request_id or '(no id)'}"
        error = UpstreamError(f"{where}: llama.cpp failed: {type(exc).__name__}: {exc}", engine=self.name)
        error.__cause__ = exc
        return error

    def _checkout(self, prompt: Sequence[int]) -> Any:
        """A free context, the one holding the longest prefix of ``prompt`` first."""
        with self._lock:
            held = [_common_prefix(m.input_ids[: m.n_tokens], prompt) for m in self._free]
            return self._free.pop(int(np.argmax(held)))

    def _prefill(self, llm: Any, prompt: Sequence[int]) -> None:
        """Evaluate ``prompt``, keeping the cached prefix (always re-reading its last token for fresh logits)."""
        reuse = min(_common_prefix(llm.input_ids[: llm.n_tokens], prompt), len(prompt) - 1)
        memory = self._lib.llama_get_memory(llm.ctx)
        if not self.prefix_cache or reuse <= 0 or not self._lib.llama_memory_seq_rm(memory, -1, reuse, -1):
            reuse = 0
            self._lib.llama_memory_clear(memory, True)  # a fresh cache: same cell layout as a new context
        llm.n_tokens = reuse
        llm.eval(list(prompt[reuse:]))
        with self._lock:
            self.prompt_tokens_reused += reuse
            self.prompt_tokens_evaluated += len(prompt) - reuse

    def _decode(self, llm: Any, request: EngineRequest, seed: int, channel: _Channel) -> None:
        lib = self._lib
        stops = set(request.stop_token_ids)
        if not channel.wait_demand():
            return
        self._prefill(llm, request.prompt)
        sampler = self._sampler(request.sampling, seed)
        try:
            token = -1
            for i in range(request.max_tokens):
                if i:
                    if not channel.wait_demand():
                        return
                    llm.eval([token])
                row = np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(self.vocab_size,))
                token = int(lib.llama_sampler_sample(sampler, llm.ctx, -1))
                try:
                    entropy, logprob, ids, logprobs = row_signals(row, token, request.top_k)
                except ValueError as exc:
                    raise UpstreamError(
                        f"engine {self.name!r}: {exc} at position {len(request.prompt) + i}", engine=self.name
                    ) from None
                finish = None
                if token in stops or lib.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                elif i == request.max_tokens - 1:
                    finish = "length"
                top = (tuple(ids.tolist()), tuple(logprobs.tolist())) if request.top_k else (None, None)
                channel.put(EngineToken(token, entropy, *top, logprob=logprob, finish_reason=finish))
                if finish is not None:
                    return
        finally:
            lib.llama_sampler_free(sampler)

    def _sampler(self, sampling: Sampling, seed: int) -> Any:
        """llama.cpp's sampler chain in the SDK's order: temperature, top-p, min-p, then the draw."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if not sampling.do_sample:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if sampling.temperature != 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(sampling.temperature)))
        if sampling.top_p is not None:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(sampling.top_p), 1))
        if sampling.min_p is not None:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(float(sampling.min_p), 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    # -- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel the requests in flight, wait for their workers, and free every llama.cpp context."""
        with self._lock:
            pool, self._pool = self._pool, None
            channels = list(self._channels)
        if pool is None:
            return
        for channel in channels:
            channel.cancel(UpstreamError(f"engine {self.name!r} was closed while the request ran", engine=self.name))
        pool.shutdown(wait=True)
        for llm in self._models:
            llm.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
