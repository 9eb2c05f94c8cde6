"""`VLLMServer`: a ``vllm serve`` process on localhost for tests, docs and benchmarks.

It starts vLLM's OpenAI-compatible server on a model folder (prefix caching on, top-k
log-probabilities allowed, offline: nothing is downloaded), waits for ``/health`` with a bounded
timeout, and stops the server's whole process group (the API server and its engine process) on
`stop`, on leaving a ``with`` block, and at interpreter exit. A server that dies or never gets
ready raises `EngineStartError` carrying the tail of its log.

``start()`` returns at once and ``wait_ready()`` blocks, so a test session can launch its servers
early and let them load while other tests run.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ead_sdk.errors import EngineStartError

_LIVE: weakref.WeakSet[VLLMServer] = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class VLLMServerOptions:
    """How ``vllm serve`` runs: small and polite on a shared CPU machine by default.

    Attributes:
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE``, the CPU build's KV-cache size in GiB.
        cpu_cores: the cores the CPU build's OpenMP threads bind to (``VLLM_CPU_OMP_THREADS_BIND``);
            empty leaves vLLM's own choice.
        max_logprobs: the most top-k log-probabilities a request may ask for.
        max_model_len: the longest prompt plus completion, in tokens.
        max_num_seqs: the most requests batched in one step.
        dtype: the weights' dtype as served.
        enforce_eager: run the model eagerly: no torch.compile warm-up, which on the CPU build
            takes minutes on a busy two-core machine (decode is somewhat slower without it).
        extra_args: further ``vllm serve`` arguments, appended as given.
        env: further environment variables for the server.
    """

    kv_cache_gib: float = 1
    cpu_cores: tuple[int, ...] = ()
    max_logprobs: int = 20
    max_model_len: int = 2048
    max_num_seqs: int = 16
    dtype: str = "float32"
    enforce_eager: bool = True
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


class VLLMServer:
    """A ``vllm serve`` process serving one model folder on ``host``:``port``.

    Args:
        model: the model folder (or anything ``vllm serve`` takes as its model).
        name: the served model name, the ``model`` field of requests; the folder's name by default.
        host: the address to listen on.
        port: the port; a free one by default.
        options: `VLLMServerOptions`.
        log_path: where the server's output goes; a temporary file by default.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        options: VLLMServerOptions | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ):
        self.model = str(model)
        self.name = name or Path(self.model).name
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.options = options or VLLMServerOptions()
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready_after_s: float | None = None

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI API's base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        """The command line that starts the server: this Python's vLLM, ``vllm serve``'s arguments."""
        opts = self.options
        return [
            sys.executable,
            "-m",
            # the API server's module, not `vllm serve`: vLLM's CPU build (distribution vllm-cpu)
            # fails in the `vllm` CLI, which asks for the version of a distribution named vllm
            "vllm.entrypoints.openai.api_server",
            *("--model", self.model),
            *("--served-model-name", self.name, "--host", self.host, "--port", str(self.port)),
            *("--dtype", opts.dtype, "--max-model-len", str(opts.max_model_len)),
            *("--max-num-seqs", str(opts.max_num_seqs), "--max-logprobs", str(opts.max_logprobs)),
            *("--enable-prefix-caching", "--seed", "0", "--uvicorn-log-level", "warning"),
            *(("--enforce-eager",) if opts.enforce_eager else ()),
            *opts.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment: the CPU build's settings, offline, no usage reports."""
        env = dict(os.environ)
        env.update(
            VLLM_CPU_KVCACHE_SPACE=f"{self.options.kv_cache_gib:g}",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",  # the log's tail is current when a start fails
            OMP_NUM_THREADS=str(max(1, len(self.options.cpu_cores))),
        )
        if self.options.cpu_cores:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in self.options.cpu_cores)
        env.update(self.options.env)
        return env

    def start(self) -> VLLMServer:
        """Launch the server and return at once (`wait_ready` blocks until it answers)."""
        if self.process is not None:
            return self
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the engine process too
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        self.started_at = time.monotonic()
        _LIVE.add(self)
        return self

    def wait_ready(self, timeout_s: float = 600.0) -> VLLMServer:
        """Block until ``/health`` answers 200.

        Raises:
            EngineStartError: the server exited, or was not ready within ``timeout_s`` (it is
                stopped then); the message carries the tail of its log.
        """
        self.start()
        assert self.process is not None and self.started_at is not None
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise EngineStartError(self._failure(f"exited with code {code} before it was ready"))
            if self._healthy():
                if self.ready_after_s is None:
                    self.ready_after_s = time.monotonic() - self.started_at
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise EngineStartError(self._failure(f"was not ready after {timeout_s:g} s (stopped)"))
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _failure(self, what: str) -> str:
        return f"vllm serve of {self.model} on {self.url} {what}; log {self.log_path}, last lines:\n{self.log_tail()}"

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``grace_s``. Idempotent."""
        process, self.process = self.process, None
        _LIVE.discard(self)
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        _signal_group(process, signal.SIGKILL)  # engine processes that outlived the API server

    def __enter__(self) -> VLLMServer:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.process is None else "running"
        return f"VLLMServer({self.model!r}, url={self.url!r}, {state})"


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the process that started it dies, even by SIGKILL (Linux only).

    Set only from the main thread: the kernel sends it when the starting *thread* ends.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def stop_all(servers: Sequence[VLLMServer] | None = None) -> None:
    """Stop the given servers, or every server this process started and has not stopped."""
    for server in list(servers if servers is not None else _LIVE):
        server.stop()


atexit.register(stop_all)
