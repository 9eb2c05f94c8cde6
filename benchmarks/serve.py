"""ead serve's added latency: streaming through the proxy vs calling the upstream directly.

Each upstream is an OpenAI-compatible server in a process of its own on loopback: by default the
SDK's fake server (`ead_sdk.testing.fake_openai`) pacing every token by ``--token-delay`` (a
stand-in for a decode step), or any real servers given with ``--small/--large`` and
``--tokenizer``. ``ead serve`` runs as its own process in front of them, with a policy that keeps
every token on the small model (``fixed``): the same tokens, the same upstream, so the difference
is the proxy's work (HTTP in and out, SSE, the router's per-token decisions). A switching policy
is timed too, for reference (its hand-offs cost upstream prefill, not proxy work).

The same streaming requests (token-id prompts, greedy, ``--max-tokens``) are sent by the official
``openai`` client at concurrency 1 and 16 to the upstream directly and to ``ead serve``, and the
script prints, per concurrency: time to first token, mean inter-token latency and request latency
(medians over requests), what the proxy adds to each, in milliseconds and percent, and the CPU time
the serving process spent per token (``/proc``; for the direct rows, the upstream's own), which
says what bounds the added latency on a machine short of cores.

    python benchmarks/serve.py                       # fake upstreams, 20 ms a token
    python benchmarks/serve.py --token-delay 0.005 --requests 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from ead_sdk.testing.vllm_server import free_port

VOCAB = 64
UPSTREAM = """
import sys, time
from ead_sdk.testing.fake_openai import FakeOpenAI, ToyLM
server = FakeOpenAI(ToyLM({vocab}, seed={seed}), model="{name}", token_delay={delay}).start()
print(server.base_url, flush=True)
while True:
    time.sleep(3600)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def start_fake(name: str, seed: int, delay: float) -> tuple[subprocess.Popen, str]:
    """A fake OpenAI upstream in its own process; returns it and its base URL."""
    code = UPSTREAM.format(vocab=VOCAB, seed=seed, name=name, delay=delay)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    return proc, proc.stdout.readline().strip()


def word_tokenizer(folder: Path) -> Path:
    """A tokenizer whose token i is the word ``t{i}``, saved to ``folder`` (the fake's vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(folder)
    return folder


def start_serve(spec: dict, small: str, large: str, tokenizer: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    """``ead serve`` in its own process in front of ``small`` and ``large``; returns it and its URL."""
    path = folder / f"spec-{spec['policy']}.json"
    path.write_text(json.dumps(spec))
    port = free_port()
    cmd = [sys.executable, "-m", "ead_sdk.cli", "serve", "--spec", str(path), "--small", small, "--large", large]
    cmd += ["--tokenizer", str(tokenizer), "--num-params", "135", "--num-params", "1700", "--port", str(port)]
    cmd += ["--log-level", "warning", "--max-lanes", "64"]
    proc = subprocess.Popen(cmd, env=_env())
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("ead serve did not start")


async def one_request(
    client: openai.AsyncOpenAI, model: str, prompt: list[int], max_tokens: int, logprobs: int | None
) -> dict:
    """Stream one completion; the arrival time of every chunk that carries text."""
    start = time.perf_counter()
    times = []
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True, logprobs=logprobs
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
    end = time.perf_counter()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"ttft": times[0] - start, "itl": statistics.fmean(gaps), "latency": end - start, "tokens": len(times)}


async def run_load(target: tuple, requests: int, concurrency: int, max_tokens: int) -> dict:
    """Send ``requests`` streaming completions, ``concurrency`` at a time; medians of each figure."""
    base_url, model, logprobs = target
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> dict:
        async with gate:
            return await one_request(client, model, [1 + i % 60, 2 + i % 50, 3], max_tokens, logprobs)

    try:
        rows = await asyncio.gather(*[one(i) for i in range(requests)])
    finally:
        await client.close()
    return {k: statistics.median(r[k] for r in rows) for k in ("ttft", "itl", "latency", "tokens")}


def _row(label: str, base: dict, got: dict) -> str:
    cells = [f"{label:<24}"]
    for key in ("ttft", "itl", "latency"):
        added = got[key] - base[key]
        cells.append(f"{got[key] * 1e3:8.2f} ms ({added * 1e3:+7.2f} ms, {added / base[key] * 100:+6.1f}%)")
    return " ".join(cells)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(targets: dict[str, tuple], pids: dict[str, int], args: argparse.Namespace) -> None:
    """Warm up each target, then time each at each concurrency, side by side; CPU per token of each process."""
    for target in targets.values():
        asyncio.run(run_load(target, 4, 4, 4))  # connections, first-request costs
    print(f"{'':<24} {'TTFT':<32} {'inter-token':<32} {'request':<32}")
    for concurrency in (1, 16):
        requests = max(args.requests, concurrency * 2)
        results, cpu = {}, {}
        for name, target in targets.items():
            before = cpu_seconds(pids[name])
            results[name] = asyncio.run(run_load(target, requests, concurrency, args.max_tokens))
            cpu[name] = (cpu_seconds(pids[name]) - before) / (requests * results[name]["tokens"])
        base = results["upstream directly"]
        print(f"concurrency {concurrency}, {requests} requests of {args.max_tokens} tokens (medians):")
        for name, got in results.items():
            print(_row(name, base, got), f"  server CPU {cpu[name] * 1e3:.2f} ms/token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-delay", type=float, default=0.02, help="the fake upstreams' seconds per token")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            small_proc, small = start_fake("small", 1, args.token_delay)
            large_proc, large = start_fake("large", 2, args.token_delay)
            procs += [small_proc, large_proc]
            tokenizer = word_tokenizer(folder / "tok")
            topk = {"kind": "topk_entropy", "k": 8}
            fixed = {"policy": "fixed", "params": {"model": 0}, "signal": topk}
            switching = {"policy": "rolling_entropy", "params": {"threshold": 1.5, "window": 1}, "signal": topk}
            fixed_proc, fixed_url = start_serve(fixed, small, large, tokenizer, folder)
            procs.append(fixed_proc)
            switch_proc, switch_url = start_serve(switching, small, large, tokenizer, folder)
            procs.append(switch_proc)
            delay_ms = args.token_delay * 1e3
            print(f"fake upstreams at {delay_ms:g} ms a token; ead serve and each upstream in its own process")
            targets = {
                "upstream directly": (small, "small", None),
                "upstream, top-8 logprobs": (small, "small", 8),  # what the router asks the upstream for
                "ead serve (fixed small)": (fixed_url, "ead-router", None),
                "ead serve (switching)": (switch_url, "ead-router", None),
            }
            procs_of = [small_proc, small_proc, fixed_proc, switch_proc]
            pids = {name: proc.pid for name, proc in zip(targets, procs_of, strict=True)}
            measure(targets, pids, args)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
