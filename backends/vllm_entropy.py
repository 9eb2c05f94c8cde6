"""Exact entropy of every streamed token, computed by vLLM's own worker on the device.

`EntropyProcessor` is a vLLM logits processor that returns the logits unchanged. For each request
that opted in (``SamplingParams.extra_args["ead_sdk.entropy"]``) it computes, on the device, the
entropy of the full raw distribution the token is about to be drawn from, and sends one 16-byte
record (request tag, position, entropy) to the requesting process over a Unix socket.
`EntropyChannel` is that socket's receiving end in the requesting process: a stream waits there
for the entropy of each token it receives from vLLM.

Why a side channel: vLLM's engine core and its worker run in other processes, and nothing a logits
processor computes reaches `RequestOutput`. The socket costs one ``send`` of ``16 * rows`` bytes
per step in the worker and a small read in the requesting process.

The processor sees the logits after vLLM's masks (``allowed_token_ids``, bad words) and the built-in
``min_tokens``/``logit_bias`` processors, before penalties and temperature: the raw distribution as
long as a request sets none of those (`ead_sdk.backends.vllm_engine.VLLMEngine` never does). It
must run for greedy batches too, so it is not argmax-invariant (vLLM skips those when all greedy).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from ead_sdk.backends.vllm_rows import HostCopies, RowTable
from ead_sdk.errors import UpstreamError
from ead_sdk.signals import entropy

EXTRA_KEY = "ead_sdk.entropy"
"""The ``SamplingParams.extra_args`` key that opts a request in: ``{"channel": path, "tag": int}``."""

RECORD = np.dtype([("tag", "<i8"), ("pos", "<i4"), ("entropy", "<f4")])
"""One record on the wire: the request's tag, the token's position in its output, the entropy (nats)."""

_DIR_PREFIX = "ead-sdk-vllm-"
_SOCKET_NAME = "entropy.sock"


def _channel_path(value: Any) -> str:
    """``value`` if it names a channel socket this SDK created (in the temp directory), else ValueError."""
    path = Path(str(value))
    if path.name != _SOCKET_NAME or not path.parent.name.startswith(_DIR_PREFIX):
        raise ValueError(f"{EXTRA_KEY}: channel {value!r} is not an ead-sdk entropy socket")
    if path.parent.parent.resolve() != Path(tempfile.gettempdir()).resolve():
        raise ValueError(f"{EXTRA_KEY}: channel {value!r} is outside {tempfile.gettempdir()}")
    return str(path)


def read_request(params: Any) -> tuple[str, int] | None:
    """The ``(channel, tag)`` a request's `SamplingParams` asks for, or ``None`` if it did not opt in."""
    value = (getattr(params, "extra_args", None) or {}).get(EXTRA_KEY)
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"channel", "tag"}:
        raise ValueError(f"{EXTRA_KEY} must be {{'channel': path, 'tag': int}}, got {value!r:.80}")
    tag = value["tag"]
    if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < 2**63:
        raise ValueError(f"{EXTRA_KEY}: tag must be an integer in [0, 2**63), got {tag!r:.40}")
    return _channel_path(value["channel"]), tag


class EntropyProcessor(LogitsProcessor):
    """A vLLM logits processor that streams each opted-in token's exact entropy and changes nothing.

    Pass the class to vLLM (``logits_processors=[EntropyProcessor]``); a request opts in with
    ``SamplingParams(extra_args={"ead_sdk.entropy": {"channel": path, "tag": tag}})`` where ``path``
    is an `EntropyChannel`'s socket. A channel that went away is dropped; the engine runs on.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.table = RowTable(read_request)
        self.links: dict[str, socket.socket] = {}
        self.host = HostCopies(self._send, device, threaded=False)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        read_request(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it must see greedy batches too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.table.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = self.table.rows
        if not rows:
            return logits
        h = entropy(logits, validate=False)  # every row at once: cheaper than gathering the opted-in ones
        if len(rows) < logits.shape[0]:
            h = h.index_select(0, self.table.index_tensor(logits.device))
        order = self.table.indices()
        meta = [(rows[i].key[0], rows[i].key[1], len(rows[i].output)) for i in order]
        self.host.submit([h.float()], meta)
        return logits

    def _send(self, arrays: list[np.ndarray], meta: list[tuple[str, int, int]]) -> None:
        records = np.empty(len(meta), RECORD)
        records["tag"] = [m[1] for m in meta]
        records["pos"] = [m[2] for m in meta]
        records["entropy"] = arrays[0]
        for channel in {m[0] for m in meta}:
            chosen = records if len(meta) == 1 else records[[m[0] == channel for m in meta]]
            self._send_to(channel, chosen.tobytes())

    def _send_to(self, channel: str, payload: bytes) -> None:
        link = self.links.get(channel)
        try:
            if link is None:
                link = self.links[channel] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                link.connect(channel)
            link.sendall(payload)
        except OSError:  # the requesting process went away: its streams are gone too
            self.links.pop(channel, None)
            if link is not None:
                link.close()


class EntropyChannel:
    """The requesting process's end: a Unix socket that collects entropy records by request tag.

    Create it, call `start` inside the event loop that runs the streams, give each stream a tag
    from `open`, and `wait` for each token's entropy. The socket lives in a private temporary
    directory, removed by `close`.
    """

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        self.path = str(self.directory / _SOCKET_NAME)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self._sock.listen(8)
        self._tags = itertools.count(1)
        self._values: dict[int, dict[int, float]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._readers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.late_records = 0

    async def start(self) -> None:
        """Accept the workers' connections in the running loop."""
        if self._server is None:
            self._server = await asyncio.start_unix_server(self._serve, sock=self._sock)

    def open(self) -> int:
        """A fresh tag for one request."""
        tag = next(self._tags)
        self._values[tag] = {}
        return tag

    def release(self, tag: int) -> None:
        """Forget ``tag`` (its request ended); records that still arrive for it are counted and dropped."""
        self._values.pop(tag, None)
        waiter = self._waiters.pop(tag, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def wait(self, tag: int, pos: int, timeout: float, engine: str) -> float:
        """The entropy of request ``tag``'s token at ``pos``; `UpstreamError` after ``timeout`` seconds."""
        values = self._values[tag]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pos not in values:
            waiter = self._waiters[tag] = loop.create_future()
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise UpstreamError(
                    f"vLLM engine {engine!r}: no entropy arrived for position {pos} within {timeout:g} s "
                    "(is ead_sdk.backends.vllm_entropy.EntropyProcessor loaded in the engine?)",
                    engine=engine,
                ) from None
        return values.pop(pos)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._readers[task] = writer
        pending = b""
        try:
            while chunk := await reader.read(1 << 16):
                pending += chunk
                whole = len(pending) - len(pending) % RECORD.itemsize
                if whole:
                    self._store(np.frombuffer(pending[:whole], RECORD))
                    pending = pending[whole:]
        finally:
            self._readers.pop(task, None)
            writer.close()

    def _store(self, records: np.ndarray) -> None:
        for tag, pos, h in zip(
            records["tag"].tolist(), records["pos"].tolist(), records["entropy"].tolist(), strict=True
        ):
            values = self._values.get(tag)
            if values is None:
                self.late_records += 1
                continue
            values[pos] = h
            waiter = self._waiters.pop(tag, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def aclose(self) -> None:
        """Stop accepting, and remove the socket's directory."""
        if self._server is not None:
            self._server.close()
            self._server = None
        else:
            self._sock.close()
        readers = dict(self._readers)
        for writer in readers.values():
            writer.close()  # the reader then sees the end of its stream and returns
        if readers:
            await asyncio.wait(list(readers), timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)
