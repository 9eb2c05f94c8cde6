"""The lane hand-off router's own CPU time per token, on in-memory engines (no models, no network).

Two runs side by side in one process (best of ``--repeats`` each, CPU time of this process):

1. ``direct``: every lane's whole trajectory streamed straight from one in-memory engine
   (`ead_sdk.testing.serving.TraceEngine`), ``--lanes`` lanes concurrently under asyncio: what
   reading the engines costs without any routing.
2. ``routed``: the same lanes through a `HandoffRouter` over one engine per model, with a
   ``rolling_entropy`` policy whose threshold is set to reach about ``--share`` large-model share.

The router's CPU time per emitted token is ``(routed - direct) / tokens``: the policy's batched
``decide``, the lanes' bookkeeping, the cost ledger, the hand-offs' new requests and the asyncio
plumbing; the batched decisions' share of it is timed apart. The engines are recorded traces, so
their own per-token work is a few dictionary and tuple operations, counted in both runs. Prints one line last:
``router_us_per_token=<a> direct_us_per_token=<b> routed_us_per_token=<c> large_share=<d>``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from ead_sdk.handoff import HandoffRouter
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.serving import EngineRequest
from ead_sdk.simulators import replay, synthetic_traces
from ead_sdk.testing.serving import TraceEngine


def threshold_for(traces, share: float) -> float:
    """The rolling-entropy threshold whose replay gives about ``share`` large-model share."""
    lo, hi = 0.0, 10.0
    for _ in range(30):
        mid = (lo + hi) / 2
        got = replay(traces, RollingEntropyPolicy(threshold=mid, window=4, unit="nats")).report().large_share
        lo, hi = (mid, hi) if got > share else (lo, mid)
    return (lo + hi) / 2


async def direct(engine: TraceEngine, prompts: list[list[int]], length: int) -> int:
    async def lane(prompt: list[int]) -> int:
        count = 0
        async for _ in engine.stream(EngineRequest(tuple(prompt), length)):
            count += 1
        return count

    return sum(await asyncio.gather(*(lane(p) for p in prompts)))


def time_batches(router: HandoffRouter) -> list[float]:
    """Accumulate the CPU time of the router's batched decisions (building the Step, ``decide``, routes)."""
    spent = [0.0]
    flush = router.decider._flush

    def timed_flush() -> None:
        start = time.process_time()
        flush()
        spent[0] += time.process_time() - start

    router.decider._flush = timed_flush
    return spent


def timed(fn) -> tuple[float, object]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per lane")
    parser.add_argument("--share", type=float, default=0.35, help="target large-model share")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    traces = synthetic_traces(args.lanes, args.tokens, k=0, seed=0)
    policy = RollingEntropyPolicy(threshold=threshold_for(traces, args.share), window=4, unit="nats")
    prompts = [s.prompt_ids.tolist() for s in traces.sequences()]
    best_direct = best_routed = best_decide = float("inf")
    result = None
    for _ in range(args.repeats):
        engine = TraceEngine(traces, 0)
        seconds, tokens = timed(lambda e=engine: asyncio.run(direct(e, prompts, args.tokens)))
        best_direct = min(best_direct, seconds / tokens)
        router = HandoffRouter(TraceEngine.ladder(traces), policy, max_lanes=args.lanes)
        spent = time_batches(router)
        seconds, result = timed(lambda r=router: r.generate_sync(prompts, max_new_tokens=args.tokens))
        if seconds / result.report.tokens < best_routed:
            best_routed, best_decide = seconds / result.report.tokens, spent[0] / result.report.tokens
    report = result.report
    handoffs = sum(len(lane.handoffs) for lane in result)
    latency = np.median(result.handoff_latencies) * 1e6 if handoffs else float("nan")
    print(f"lanes={args.lanes} tokens/lane={args.tokens} emitted={report.tokens} handoffs={handoffs}")
    print(f"decide batches={router.decider.batches} (mean {router.decider.decided / router.decider.batches:.1f} lanes)")
    print(f"median hand-off latency on in-memory engines: {latency:.0f} us")
    print(f"of the routed time per token, batched decisions (Step, decide, routes): {best_decide * 1e6:.1f} us")
    print(
        f"router_us_per_token={(best_routed - best_direct) * 1e6:.1f} direct_us_per_token={best_direct * 1e6:.1f} "
        f"routed_us_per_token={best_routed * 1e6:.1f} large_share={report.large_share:.3f}"
    )


if __name__ == "__main__":
    main()
