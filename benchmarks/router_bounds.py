"""What bounds a learned router on the demo pair: training data, or the features?

On the shipped traces' split of ``python -m ead_sdk.demo.learned_router`` (seed 0), prints the
held-out AUC of an mlp router (1) trained on 25%, 50% and all of the training sequences, and
(2) with the small model's last hidden state (recomputed teacher-forced, one forward per
sequence) added to the default features, or alone. Needs the hf extra (torch, transformers).

    python benchmarks/router_bounds.py
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from ead_sdk.demo import small_model_dir
from ead_sdk.demo.record_traces import default_traces_path
from ead_sdk.router import FeatureSpec, auc, position_dataset, split_sequences
from ead_sdk.router.training import _fit, _unpack


def hidden_states(traces) -> np.ndarray:
    """The small model's last hidden state at every generated position (flat row order)."""
    model = AutoModelForCausalLM.from_pretrained(small_model_dir(), local_files_only=True).eval()
    rows = []
    with torch.no_grad():
        for s in traces.sequences():
            ids = torch.tensor(np.concatenate([s.prompt_ids, s.token_ids]).astype(np.int64))[None]
            out = model(input_ids=ids, output_hidden_states=True)
            p, t = len(s.prompt_ids), len(s.token_ids)
            rows.append(out.hidden_states[-1][0, p - 1 : p + t - 1].double().numpy())
    return np.concatenate(rows)


def held_out_auc(x: np.ndarray, y: np.ndarray, train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> float:
    mean, std = x[train].mean(0), x[train].std(0)
    z = (x - mean) / np.where(std > 1e-12, std, 1.0)
    shapes = [(x.shape[1], 16), (16, 1)]
    theta, *_ = _fit(
        z[train],
        y[train].astype(float),
        z[valid],
        y[valid].astype(float),
        shapes,
        seed=0,
        l2=1e-4,
        max_iter=500,
        patience=20,
    )
    h = z[test]
    layers = _unpack(theta, shapes)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        h = np.tanh(h) if i < len(layers) - 1 else h
    return auc(h[:, 0], y[test])


def main() -> None:
    torch.set_num_threads(1)
    from ead_sdk.traces import read_traces

    traces = read_traces(default_traces_path())
    x, y, seq = position_dataset(traces, FeatureSpec(), offset=0)
    split = split_sequences(len(traces), 0.15, 0.25, 0)
    valid, test = np.isin(seq, split.valid), np.isin(seq, split.test)
    rng = np.random.default_rng(0)
    for share in (0.25, 0.5, 1.0):
        subset = rng.permutation(split.train)[: int(share * split.train.size)]
        train = np.isin(seq, subset)
        score = held_out_auc(x, y, train, valid, test)
        print(f"training sequences {share:.0%} ({int(train.sum())} positions): held-out AUC {score:.3f}")
    hidden = hidden_states(traces)
    train = np.isin(seq, split.train)
    for name, features in (("default + hidden state", np.concatenate([x, hidden], 1)), ("hidden state alone", hidden)):
        print(f"{name} ({features.shape[1]} columns): held-out AUC {held_out_auc(features, y, train, valid, test):.3f}")


if __name__ == "__main__":
    main()
