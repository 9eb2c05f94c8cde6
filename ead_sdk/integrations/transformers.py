"""The policy's multi-model decoding behind transformers' ``generate(..., custom_generate=...)``.

``large.generate(input_ids, custom_generate=ead_generate, ead_policy="spec.json",
ead_models=["path/to/small"], max_new_tokens=64)`` lets ``generate`` prepare its inputs and
generation config as usual, then decodes with `ead_sdk.generate` over a `TransformersBackend`
holding the model ``generate`` was called on and the other models, and returns what
transformers users expect: prompt + generated ids (a ``GenerateDecoderOnlyOutput`` with the
routes and cost report attached when ``return_dict_in_generate=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from ead_sdk.backend import Sampling
from ead_sdk.backends.hf import TransformersBackend
from ead_sdk.cost import CostModel, CostReport
from ead_sdk.decode import GenerateResult, generate
from ead_sdk.errors import BackendError
from ead_sdk.integrations.observe import Observation, ObservedLane, PolicyObserver
from ead_sdk.interface import Policy
from ead_sdk.specs import load_policy

__all__ = [
    "EadGenerateOutput",
    "Observation",
    "ObservedLane",
    "PolicyObserver",
    "custom_generate_path",
    "ead_generate",
]

# What the SDK's sampler reproduces from a generation config; anything else is refused.
_WARPERS = tuple(
    getattr(transformers, name)
    for name in ("TemperatureLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper", "TopHLogitsWarper")
    if hasattr(transformers, name)
)
_CRITERIA = (MaxLengthCriteria, EosTokenCriteria)
_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


@dataclass
class EadGenerateOutput(GenerateDecoderOnlyOutput):
    """``GenerateDecoderOnlyOutput`` plus the routing: what ``return_dict_in_generate=True`` returns.

    Attributes:
        routes: ``(batch, generated)`` int64: the model (0 = smallest) that emitted each
            generated token; ``-1`` where a lane had already finished (padding).
        report: the routing cost of the whole batch (`ead_sdk.CostReport`).
        result: the full `ead_sdk.GenerateResult` (per-lane tokens, models, reports).
    """

    routes: torch.LongTensor | None = None
    report: CostReport | None = None
    result: GenerateResult | None = None


def custom_generate_path() -> str:
    """The folder to pass as ``custom_generate=`` (with ``trust_remote_code=True``) for the folder form."""
    return str(Path(__file__).resolve().parent)


def ead_generate(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    generation_config: Any = None,
    synced_gpus: bool = False,
    streamer: Any = None,
    ead_policy: Policy | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ead_models: Sequence[Any] | None = None,
    ead_logprobs: int | str | None = None,
    ead_cost_model: CostModel | None = None,
    ead_record: Any = None,
    ead_record_k: int = 0,
    ead_seed: int | None = None,
    ead_stop: Sequence[str | int] = (),
    ead_tokenizer: Any = None,
    ead_trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> torch.LongTensor | EadGenerateOutput:
    """Decode with a routing policy over ``model`` and ``ead_models``: a ``custom_generate`` callable.

    Pass it as ``model.generate(..., custom_generate=ead_generate, ead_policy=..., ead_models=...)``;
    transformers prepares the inputs and the generation config and calls it with them.

    Args:
        model: the model ``generate`` was called on; it joins ``ead_models`` in the ladder,
            which is ordered by parameter count (smallest first; ties keep ``ead_models`` first).
        input_ids: ``(batch, length)`` prompts, left-padded when their lengths differ.
        logits_processor: prepared by ``generate``; only the sampling warpers the SDK's sampler
            reproduces from the generation config are accepted (temperature, top-p, min-p, top-H).
        stopping_criteria: prepared by ``generate``; only its length and end-of-sequence
            criteria are accepted.
        generation_config: prepared by ``generate``: length, sampling and special tokens.
        synced_gpus: must be false (no multi-GPU synchronised decoding).
        streamer: not passed on by transformers to callables; must be ``None``.
        ead_policy: the policy, or its spec (a dict, JSON string or ``spec.json`` path).
        ead_models: the other models: loaded models or local paths (loaded with
            ``local_files_only=True`` in ``model``'s dtype, on its device).
        ead_logprobs: what the policy's `Step.logprobs` holds: top-``k``, ``"full"`` or ``None``.
        ead_cost_model: per-model forward costs (default: parameter counts).
        ead_record: a path or `ead_sdk.traces.TraceWriter`: record the run as a trace.
        ead_record_k: top-k log-probabilities recorded per model and position.
        ead_seed: the sampler's seed (default: drawn from torch's global generator, so
            ``torch.manual_seed`` makes sampling reproducible as usual).
        ead_stop: stop strings (with ``ead_tokenizer``) and stop token ids, as `ead_sdk.generate`'s
            ``stop`` (transformers does not pass its tokenizer to a callable, so its own
            ``stop_strings`` cannot work here).
        ead_tokenizer: the shared tokenizer (for stop strings; also checks the models share it).
        ead_trust_remote_code: passed to ``from_pretrained`` for paths in ``ead_models``.
        **model_kwargs: prepared by ``generate``; ``attention_mask`` marks left padding.

    Returns:
        A LongTensor ``(batch, length + generated)``: each prompt row as given, then its tokens,
        then padding after a lane's end; or an `EadGenerateOutput` with
        ``return_dict_in_generate=True``.

    Raises:
        BackendError: a setting this decoder cannot honour (beam search, top-k, extra logits
            processors or stopping criteria, score outputs...), or models that cannot be loaded.
    """
    if ead_policy is None:
        raise BackendError("ead_generate needs ead_policy= (a policy, its spec dict or a spec.json path)")
    policy = ead_policy if isinstance(ead_policy, Policy) else load_policy(ead_policy)
    gc = generation_config
    _refuse_unsupported(model, gc, logits_processor, stopping_criteria, synced_gpus, streamer, model_kwargs)
    others = [_load(m, i, model, ead_trust_remote_code) for i, m in enumerate(ead_models or ())]
    ladder = sorted([*others, model], key=_param_count)
    prompts = _prompts(input_ids, model_kwargs.get("attention_mask"))
    eos = gc._eos_token_tensor if getattr(gc, "_eos_token_tensor", None) is not None else gc.eos_token_id
    eos_ids = [] if eos is None else torch.as_tensor(eos).reshape(-1).tolist()
    was_training = [m.training for m in ladder]
    try:
        backend = TransformersBackend(ladder, tokenizer=ead_tokenizer, device=model.device, eos_token_id=eos_ids)
        result = generate(
            backend,
            policy,
            prompts,
            max_new_tokens=int(gc.max_length) - int(input_ids.shape[1]),
            sampling=_sampling(gc, ead_seed),
            stop=ead_stop,
            logprobs=ead_logprobs,
            cost_model=ead_cost_model,
            record=ead_record,
            record_k=ead_record_k,
        )
    finally:
        for m, training in zip(ladder, was_training, strict=True):
            m.train(training)
    pad = gc._pad_token_tensor if getattr(gc, "_pad_token_tensor", None) is not None else gc.pad_token_id
    pad_id = int(torch.as_tensor(pad).reshape(-1)[0]) if pad is not None else (eos_ids[0] if eos_ids else 0)
    sequences, routes = _assemble(input_ids, result, pad_id)
    if not gc.return_dict_in_generate:
        return sequences
    return EadGenerateOutput(sequences=sequences, routes=routes, report=result.report, result=result)


def _refuse_unsupported(
    model: Any, gc: Any, processors: Any, criteria: Any, synced_gpus: bool, streamer: Any, model_kwargs: dict
) -> None:
    if gc is None:
        raise BackendError(
            "ead_generate is a custom_generate callable: call model.generate(..., custom_generate=ead_generate)"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise BackendError("ead_generate routes decoder-only causal LMs; this model is an encoder-decoder")
    if (gc.num_beams or 1) > 1:
        raise BackendError(f"ead_generate decodes token by token: num_beams={gc.num_beams} is not supported")
    if gc.do_sample and gc.top_k not in (None, 0):
        raise BackendError(
            f"ead_generate samples with temperature, top-p, min-p and top-H only: top_k={gc.top_k} (pass top_k=0)"
        )
    if model_kwargs.get("inputs_embeds") is not None:
        raise BackendError("ead_generate needs input_ids, not inputs_embeds")
    if synced_gpus:
        raise BackendError("ead_generate does not support synced_gpus")
    if streamer is not None:
        raise BackendError("ead_generate does not stream: use ead_sdk.stream for token events")
    on = [name for name in _UNSUPPORTED_OUTPUTS if getattr(gc, name, False)]
    if on:
        raise BackendError(f"ead_generate returns sequences, routes and the cost report, not {on}")
    for p in processors or ():
        if not isinstance(p, _WARPERS):
            raise BackendError(
                f"ead_generate cannot apply logits processor {type(p).__name__}: the SDK's decoder "
                "shows policies the raw distribution and samples with temperature, top-p, min-p, top-H"
            )
    for c in criteria or ():
        if not isinstance(c, _CRITERIA):
            raise BackendError(f"ead_generate cannot apply stopping criterion {type(c).__name__}")


def _param_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _load(spec: Any, index: int, like: Any, trust_remote_code: bool) -> Any:
    """A model object from ``ead_models[index]``: as given, or loaded from a local path."""
    if not isinstance(spec, (str, os.PathLike)):
        if not hasattr(spec, "config") or not callable(spec):
            raise BackendError(f"ead_models[{index}] is neither a transformers model nor a path: {type(spec).__name__}")
        return spec
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            os.fspath(spec), local_files_only=True, trust_remote_code=trust_remote_code, dtype=like.dtype
        )
    except (OSError, ValueError) as exc:
        raise BackendError(f"ead_models[{index}]: cannot load {os.fspath(spec)!r} from local files ({exc})") from None
    return loaded.to(like.device)


def _prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    ids = input_ids.cpu().numpy()
    if attention_mask is None:
        return [row.tolist() for row in ids]
    mask = attention_mask.cpu().numpy().astype(bool)
    bad = [i for i, m in enumerate(mask) if m.any() and not m[int(m.argmax()) :].all()]
    if bad:
        raise BackendError(
            f"prompt {bad[0]} is not left-padded (its attention mask has a hole or right padding): "
            "use a tokenizer with padding_side='left'"
        )
    return [row[m].tolist() for row, m in zip(ids, mask, strict=True)]


def _sampling(gc: Any, seed: int | None) -> Sampling:
    if not gc.do_sample:
        return Sampling()
    if seed is None:  # one draw from torch's global generator: torch.manual_seed stays meaningful
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return Sampling(
        do_sample=True,
        temperature=float(gc.temperature) if gc.temperature is not None else 1.0,
        top_p=float(gc.top_p) if gc.top_p is not None and gc.top_p < 1.0 else None,
        min_p=float(gc.min_p) if gc.min_p is not None else None,
        top_h=float(gc.top_h) if gc.top_h is not None else None,
        seed=seed,
    )


def _assemble(input_ids: torch.Tensor, result: GenerateResult, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt rows as given, each lane's tokens, then padding: transformers' output layout."""
    n, longest = input_ids.shape[0], max(len(lane.tokens) for lane in result)
    gen = torch.full((n, longest), pad_id, dtype=torch.long)
    routes = torch.full((n, longest), -1, dtype=torch.long)
    for i, lane in enumerate(result):
        gen[i, : len(lane.tokens)] = torch.tensor(lane.tokens, dtype=torch.long)
        routes[i, : len(lane.models)] = torch.tensor(lane.models, dtype=torch.long)
    return torch.cat([input_ids, gen.to(input_ids.device)], 1), routes.to(input_ids.device)
