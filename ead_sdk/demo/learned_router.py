"""The demo's learned router: trained on the shipped traces, and its replayed frontier on held-out ones.

    python -m ead_sdk.demo.learned_router [--model mlp] [--out ead_sdk/demo/weights/router.json]

Trains a router (`ead_sdk.router.train_router`) on the shipped traces' training split, writes it as
a ``learned`` policy spec (the one ``ead demo`` calibrates and decodes live), and prints the
held-out precision/recall and the replayed frontier of every hand-set rule, the router and the
oracle on the test split's sequences (never seen in training). Deterministic: the same traces and
seed give the same spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from . import weights_dir

SHARES = (0.2, 0.3, 0.4)
MODEL = "mlp"
ESCALATION = "retry_token"


def router_path() -> Path:
    """The shipped router spec."""
    return weights_dir() / "router.json"


def learned_spec() -> dict[str, Any]:
    """The shipped router as a policy spec (``ead demo``'s ``learned`` row calibrates its threshold)."""
    return json.loads(router_path().read_text(encoding="utf-8"))


def train(out: Path, *, model: str = MODEL, seed: int = 0) -> dict[str, Any]:
    """Train on the shipped traces, write the spec to ``out``, return the training report and frontiers."""
    from ead_sdk.router import router_spec, train_router
    from ead_sdk.router.evaluation import compare_frontiers, gap
    from ead_sdk.traces import read_traces

    from .record_traces import default_traces_path

    traces = read_traces(default_traces_path())
    net, report = train_router(traces, model=model, escalation=ESCALATION, seed=seed)
    routers = {ESCALATION: router_spec(net, out, escalation=ESCALATION)}
    for esc in ("next", "retry"):  # a router per mode: "next" predicts the following position
        other, _ = train_router(traces, model=model, escalation=esc, seed=seed)
        routers[esc] = {**routers[ESCALATION], "params": {"threshold": 0.5, "router": other.to_json()}}
    held = traces.take(report.test_sequences)  # the same split for every router (one seed)
    res = compare_frontiers(held, routers)
    small = res["small"]
    oracle = res["oracle"]
    rows = [
        {
            "policy": c.label,
            "escalation": c.escalation,
            **{f"gap@{s:g}": gap(c.at(s), small) for s in SHARES},
        }
        for c in res["curves"]
    ]
    return {
        "training": dataclasses.asdict(report),
        "held_out_agreement_small": small,
        "oracle": {
            "escalation": "next",
            "large_share": float(oracle.share[0]),
            "gap": gap(float(oracle.agreement[0]), small),
        },
        "frontier": rows,
    }


def _print(figures: dict[str, Any]) -> None:
    tr = figures["training"]
    print(
        f"trained on {tr['sequences']['train']} sequences ({tr['positions']['train']} positions), "
        f"early stopping on {tr['sequences']['valid']}, tested on {tr['sequences']['test']} "
        f"({tr['positions']['test']} positions, {tr['positive_share']['test']:.3f} differ)"
    )
    held = tr["held_out"]
    print(f"held-out AUC {held['auc']:.3f} (entropy alone {held.get('auc_entropy_alone', float('nan')):.3f})")
    for row in held["at_share"]:
        print(f"  flag {row['flagged']:.0%}: precision {row['precision']:.3f}, recall {row['recall']:.3f}")
    o = figures["oracle"]
    print(f"oracle (next): large share {o['large_share']:.3f}, agreement gap recovered {o['gap']:.3f}")
    print("| policy | escalation | " + " | ".join(f"gap at {s:.0%} large" for s in SHARES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SHARES) + " |")
    for r in figures["frontier"]:
        cells = " | ".join(f"{r[f'gap@{s:g}']:.3f}" for s in SHARES)
        print(f"| {r['policy']} | {r['escalation']} | {cells} |")


def main(argv: list[str] | None = None) -> None:
    """Retrain the shipped router and print its held-out figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, choices=("logistic", "mlp"))
    parser.add_argument("--out", type=Path, default=router_path())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    figures = train(args.out, model=args.model, seed=args.seed)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(figures)
        print(f"wrote {args.out}")


if __name__ == "__main__":  # pragma: no cover
    main()
