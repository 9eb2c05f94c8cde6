"""Run ``ead serve``'s app on a real uvicorn server on loopback, in a thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ead_sdk.serve.server import make_server
from ead_sdk.serve.state import ServeConfig, ServeState


class ChatToyTokenizer:
    """The toy engines' tokenizer with a chat template (``role: content`` lines, then ``assistant:``)."""

    chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"

    def __init__(self, inner: Any):
        self.inner = inner
        self.eos_token_id = inner.eos_token_id

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [t % 26 for t in self.inner.encode("".join(c for c in text.lower() if c.isalpha()))]

    def apply_chat_template(
        self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True
    ) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@dataclass
class Running:
    """A server running in a thread: its base URL, its state and its uvicorn server."""

    url: str
    state: ServeState
    server: Any


@contextmanager
def running_server(
    engines: Callable[[], Sequence[Any]] | Sequence[Any],
    policy: Any,
    tokenizer: Any,
    config: ServeConfig | None = None,
    *,
    drain_timeout: float = 5.0,
) -> Iterator[Running]:
    """Start the app on 127.0.0.1 (a free port) in a thread; stop it (drained) on exit."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        try:
            ladder = engines() if callable(engines) else engines
            state = await ServeState.start(ladder, policy, tokenizer, config or ServeConfig())
            server = make_server(state, "127.0.0.1", 0, drain_timeout=drain_timeout, log_level="warning")
            box["state"], box["server"] = state, server
            task = asyncio.create_task(server.serve())
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            ready.set()
            await task
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(60)
    if "error" in box:
        raise box["error"]
    server = box["server"]
    host, port = server.bound[0]
    try:
        yield Running(f"http://{host}:{port}", box["state"], server)
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true (a test's synchronisation point), failing after ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def toy_ladder(delay: float = 0.0, eos: int | None = 25) -> list[Any]:
    """Two deterministic toy engines sharing the toy tokenizer (EOS 25 unless told), small then large."""
    from ead_sdk.testing.serving import ToyEngine

    return [
        ToyEngine(name, seed=seed, vocab_size=26, eos_token_id=eos, num_params=params, delay=delay)
        for name, seed, params in (("small", 1, 100), ("large", 2, 1000))
    ]


async def _serve_toys(delay: float, drain: float, port_file: str) -> None:
    from pathlib import Path

    from ead_sdk.specs import load_policy

    engines = toy_ladder(delay, eos=None)  # every lane runs to its max_tokens
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 3.0, "window": 1}})
    state = await ServeState.start(engines, policy, ChatToyTokenizer(engines[0].tokenizer))
    server = make_server(state, "127.0.0.1", 0, drain_timeout=drain, log_level="warning")
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    Path(port_file).write_text(str(server.bound[0][1]))
    await task


if __name__ == "__main__":  # a toy server in its own process, for the signal tests: DELAY DRAIN PORT_FILE
    import sys

    asyncio.run(_serve_toys(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]))


def sse_events(text: str) -> list:
    """The ``data:`` payloads of a server-sent-event body: parsed JSON, and the final ``"[DONE]"``."""
    out = []
    for frame in text.split("\n\n"):
        if frame.startswith("data: "):
            data = frame[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
