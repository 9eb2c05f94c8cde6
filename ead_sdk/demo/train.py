"""Train the demo model pair on CPU, deterministically.

Reproduce the committed weights (about 35 minutes on 2 shared CPU cores: small 4, large 32)::

    python -m ead_sdk.demo.train                    # -> ead_sdk/demo/weights/
    python -m ead_sdk.demo.evaluate_pair            # -> ead_sdk/demo/weights/results.json

Options: ``--out DIR``, ``--small-steps N``, ``--large-steps N``, ``--only small|large``,
``--seed``, ``--threads`` (default 2). Training is measured in optimizer steps, never in
wall-clock time, so the same command gives the same weights on the same software stack
(random init from ``torch.manual_seed``, data windows from a seeded numpy ``PCG64``,
``torch.use_deterministic_algorithms(True)``) -- checked: a second run reproduced the small
model's ``model.safetensors`` byte for byte. A different CPU, thread count or torch build may
still differ in the last bits of floating-point sums.

Both models are Llama-style causal LMs (``transformers.LlamaForCausalLM``, tied embeddings)
over the 258-token byte-level vocabulary of :mod:`ead_sdk.demo.task`, trained on every
selected standard-library file except the 20 held-out ones:

* small: 1 layer x 64 wide (about 0.08 M parameters),
* large: 4 layers x 192 wide (about 2.4 M parameters).

AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up then cosine decay to 10%,
gradient clipping at 1.0, batches of random 320-byte windows (so a 200-byte prompt plus its
next line stays inside the trained context). Each model is saved with ``save_pretrained``
(``config.json`` + ``model.safetensors``, fp32) with a ``train_meta.json`` recording the recipe,
the corpus fingerprint and the measured time; the shared tokenizer is saved once, in ``tokenizer/``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

from . import task
from .tokenizer import save_tokenizer


@dataclass(frozen=True)
class ModelRecipe:
    """One model's architecture and training schedule (steps, learning rate, batches, seed)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    steps: int
    lr: float
    warmup: int
    batch_size: int = 16
    seq_len: int = 320
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    seed: int = 1234


SMALL = ModelRecipe(
    name="small",
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=256,
    steps=4500,
    lr=4e-3,
    warmup=200,
)
LARGE = ModelRecipe(
    name="large",
    hidden_size=192,
    num_hidden_layers=4,
    num_attention_heads=6,
    intermediate_size=768,
    steps=2700,
    lr=2e-3,
    warmup=200,
)

MAX_POSITION_EMBEDDINGS = 512


def llama_config(r: ModelRecipe):
    """The ``LlamaConfig`` of a recipe over the demo's byte vocabulary (tied embeddings)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=task.VOCAB_SIZE,
        hidden_size=r.hidden_size,
        intermediate_size=r.intermediate_size,
        num_hidden_layers=r.num_hidden_layers,
        num_attention_heads=r.num_attention_heads,
        num_key_value_heads=r.num_attention_heads,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=task.EOS_ID,
        pad_token_id=task.PAD_ID,
        attention_dropout=0.0,
        initializer_range=0.02,
    )


def corpus_fingerprint() -> dict:
    """A SHA-256 of the training and held-out streams, plus their sizes."""
    tr, ev = task.training_tokens(), task.eval_tokens()
    return {
        "python": platform.python_version(),
        "train_files": len(task.train_files()),
        "train_bytes": int((tr < 256).sum()),
        "train_sha256": hashlib.sha256(tr.tobytes()).hexdigest(),
        "eval_files": list(task.eval_files()),
        "eval_bytes": int((ev < 256).sum()),
        "eval_sha256": hashlib.sha256(ev.tobytes()).hexdigest(),
    }


def _lr_at(step: int, r: ModelRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _save(model, out_dir: str, meta: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(out_dir, **kwargs)
    with open(os.path.join(out_dir, "train_meta.json"), "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
        fh.write("\n")


def _optimizer(model, r: ModelRecipe):
    """AdamW with weight decay on matrices only."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=r.lr, betas=(0.9, 0.95), eps=1e-8)


def train_one(r: ModelRecipe, out_dir: str, log_every: int = 100) -> dict:
    """Train one model from its recipe, save it to ``out_dir``, return its metadata."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(r.seed)
    model = LlamaForCausalLM(llama_config(r))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = _optimizer(model, r)
    print(
        f"[{r.name}] layers {r.num_hidden_layers} x {r.hidden_size} wide, "
        f"{n_params:,} parameters, {r.steps} steps of {r.batch_size} x {r.seq_len} bytes",
        flush=True,
    )
    batches = task.iter_training_batches(r.batch_size, r.seq_len, seed=r.seed, steps=r.steps)
    t0 = time.perf_counter()
    t_last, loss_acc, n_acc = t0, 0.0, 0
    history = []
    for step, batch in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, r)
        x = torch.from_numpy(batch)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_acc += float(loss.detach())
        n_acc += 1
        if (step + 1) % log_every == 0 or step + 1 == r.steps:
            now = time.perf_counter()
            bpb = loss_acc / n_acc / math.log(2)
            sps = n_acc / (now - t_last)
            history.append({"step": step + 1, "train_bits_per_byte": round(bpb, 4)})
            print(
                f"[{r.name}] step {step + 1:6d}/{r.steps}  loss {bpb:.3f} bits/byte  "
                f"lr {_lr_at(step, r):.2e}  {sps:.2f} steps/s  {now - t0:7.1f}s",
                flush=True,
            )
            t_last, loss_acc, n_acc = now, 0.0, 0
    elapsed = time.perf_counter() - t0
    model.eval()
    meta = {
        "recipe": asdict(r),
        "parameters": n_params,
        "train_seconds": round(elapsed, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "history": history,
        "command": " ".join(["python -m ead_sdk.demo.train"] + sys.argv[1:]),
    }
    _save(model, out_dir, meta)
    print(f"[{r.name}] saved to {out_dir} after {elapsed:.0f}s", flush=True)
    return meta


def main(argv=None) -> int:
    """Command-line entry: train the pair (or one model) into ``--out``."""
    from . import weights_dir

    ap = argparse.ArgumentParser(prog="python -m ead_sdk.demo.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(weights_dir()), help="output directory (default: the package's weights/)")
    ap.add_argument("--small-steps", type=int, default=SMALL.steps)
    ap.add_argument("--large-steps", type=int, default=LARGE.steps)
    ap.add_argument("--only", choices=["small", "large"], default=None, help="train one model only")
    ap.add_argument("--seed", type=int, default=SMALL.seed)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    out = os.path.abspath(args.out)
    tok_dir = os.path.join(out, "tokenizer")
    save_tokenizer(tok_dir)
    fp = corpus_fingerprint()
    print(
        f"corpus: {fp['train_files']} training files ({fp['train_bytes']:,} bytes), "
        f"{len(fp['eval_files'])} held-out files ({fp['eval_bytes']:,} bytes), python {fp['python']}",
        flush=True,
    )
    with open(os.path.join(out, "corpus.json"), "w") as fh:
        json.dump(fp, fh, indent=2, sort_keys=True)
        fh.write("\n")

    recipes = {
        "small": ModelRecipe(**{**asdict(SMALL), "steps": args.small_steps, "seed": args.seed}),
        "large": ModelRecipe(**{**asdict(LARGE), "steps": args.large_steps, "seed": args.seed}),
    }
    for name in ("small", "large"):
        if args.only and name != args.only:
            continue
        train_one(recipes[name], os.path.join(out, name), log_every=args.log_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
