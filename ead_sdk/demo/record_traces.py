"""Record the embedded traces that ``ead replay``/``sweep``/``calibrate`` use by default.

    python -m ead_sdk.demo.record_traces [--sequences 192] [--out ead_sdk/demo/traces/demo.parquet]

The demo pair decodes held-out prompts with the SDK's own live recording (`ead_sdk.generate`
with ``record=``): the trajectory is drawn greedily while a seeded ``random`` policy (p = 0.35,
escalation ``next``) picks the emitting model, so the path mixes both models as a routed decode
does; every position is then scored teacher-forced by both models (top-k, k = 8). The prompts
are the **last** ``--sequences`` of the held-out prompt order, so they are disjoint from the
first prompts that ``ead demo`` and ``ead eval`` evaluate on (those take the first 200-1000).
Each sequence carries its task fields: ``prompt_id``, ``reference`` (the target completion) and
``correct`` = exact match of the small-only and of the large-only greedy completion.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ead_sdk.specs import load_policy

from . import demo_dir, task

TRAJECTORY_SPEC = {"policy": "random", "params": {"p": 0.35, "seed": 0}}
SEQUENCES = 192
K = 8


def default_traces_path() -> Path:
    """The shipped trace file."""
    return demo_dir() / "traces" / "demo.parquet"


def trace_prompts(n: int = SEQUENCES) -> list[task.EvalPrompt]:
    """The recording prompts: the last ``n`` held-out prompts (disjoint from the evaluation's first ones)."""
    items = task.load_eval_prompts(None)
    return items[-n:]


def record(out: str | Path, n: int = SEQUENCES, *, max_new_tokens: int = 48, batch: int = 32) -> Path:
    """Record ``n`` sequences to ``out`` (Parquet) with task fields; returns the path written."""
    from ead_sdk.decode import generate
    from ead_sdk.traces import TraceSet, read_traces, write_traces

    from .live_eval import evaluate_live, load_backend, set_threads

    set_threads()
    backend = load_backend()
    prompts = trace_prompts(n)
    singles = [
        evaluate_live(
            backend,
            load_policy({"policy": "fixed", "params": {"model": m}}),
            prompts,
            batch=batch,
            max_new_tokens=max_new_tokens,
            logprobs=None,
        )
        for m in range(backend.num_models)
    ]
    policy = load_policy(TRAJECTORY_SPEC)
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, n, batch):
            chunk = prompts[start : start + batch]
            path = Path(tmp) / f"part{start}.arrows"
            generate(
                backend,
                policy,
                [task.encode(p.prompt) for p in chunk],
                max_new_tokens=max_new_tokens,
                stop=["\n"],
                record=str(path),
                record_k=K,
            )
            ts = read_traces(path)
            seqs = []
            for seq in ts:
                i = start + int(seq.fields["sequence_id"])
                item = prompts[i]
                seq.fields.update(
                    sequence_id=i,
                    prompt_id=item.id,
                    reference=item.target + "\n",
                    correct=tuple(bool(s.per_prompt["exact"][i]) for s in singles),
                )
                seqs.append(seq)
            parts.append(TraceSet.from_sequences(ts.meta, seqs))
        merged = TraceSet.concat(parts)
        meta = merged.meta.with_generation(
            task="ead_sdk.demo.task: complete the line (cut='half'), prompts = last held-out prompts",
            labels="correct = exact match of the small-only and large-only greedy completions",
            trajectory="greedy; emitting model chosen by " + json.dumps(TRAJECTORY_SPEC),
            recorded_by="python -m ead_sdk.demo.record_traces",
        )
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_traces(TraceSet(meta, merged.table), out, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: record and print where the traces went."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=SEQUENCES)
    ap.add_argument("--out", default=str(default_traces_path()))
    args = ap.parse_args(argv)
    path = record(args.out, args.sequences)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
