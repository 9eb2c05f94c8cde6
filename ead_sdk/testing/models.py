"""Tiny random-initialised causal LMs for tests: real transformers models, built in milliseconds, no download."""

from __future__ import annotations

from typing import Any


def tiny_llama(
    layers: int,
    hidden: int,
    *,
    vocab: int,
    seed: int = 0,
    max_positions: int = 128,
    initializer_range: float | None = None,
) -> Any:
    """A ``LlamaForCausalLM`` in eval mode, its weights a pure function of ``seed``.

    Models built with the same ``vocab`` share a tokenizer's ids (pad 0, eos 1, bos 2), so any
    of them form a ladder for a backend. ``initializer_range=1.0`` spreads next-token entropies
    over (0, 2.5) nats, which makes routing policies switch; ``None`` keeps transformers' default.
    Needs the ``hf`` extra (torch, transformers).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    extra = {} if initializer_range is None else {"initializer_range": initializer_range}
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        **extra,
    )
    return LlamaForCausalLM(cfg).eval()
