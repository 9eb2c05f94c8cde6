"""`TransformersBackend`: a ladder of Hugging Face causal LMs sharing one tokenizer.

Each model keeps its own KV cache over the whole batch. A model asked for a position it has not
reached consumes every token it missed in one forward pass (its catch-up). Lanes a model does
not serve in a pass are fed masked padding, so every cache stays aligned across lanes; position
ids are each token's true index in its lane, so the padding (left, or holes left by idle steps)
changes nothing but the attention mask. Sampling goes through transformers' logits warpers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import warnings
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from ead_sdk.backend import Backend, BatchSession, DecodeRequest, Draw, RowRecord, Sampling
from ead_sdk.errors import BackendError
from ead_sdk.signals import entropy

try:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DynamicCache,
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )
except ImportError as exc:  # pragma: no cover - the hf extra is missing
    raise ImportError("ead_sdk.backends.hf needs torch and transformers: pip install 'ead-sdk[hf]'") from exc

try:
    from transformers import TopHLogitsWarper
except ImportError:  # pragma: no cover - older transformers
    TopHLogitsWarper = None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary and special tokens: equal iff they map text alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((str(k), str(v)) for k, v in (tokenizer.special_tokens_map or {}).items())
    blob = json.dumps([vocab, special, type(tokenizer).__name__.replace("Fast", "")])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _output_vocab(model: Any) -> int:
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def _kwarg_names(model: Any) -> tuple[str, str | None]:
    """The cache and keep-logits keyword names of this transformers version's forward."""
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = "logits_to_keep" if "logits_to_keep" in params else None
    return cache, keep


def _new_cache(config: Any) -> Any:
    try:
        return DynamicCache(config=config)
    except TypeError:  # pragma: no cover - transformers 4.x
        return DynamicCache()


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's unpickling errors run to a page)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _warn_vocab_mismatch(vocabs: list[int], names: Sequence[str]) -> None:
    """Without a tokenizer nothing says which ids are real: a routing over differing vocabularies is warned about."""
    if len(set(vocabs)) > 1:
        sizes = ", ".join(f"{n!r}: {v}" for n, v in zip(names, vocabs, strict=True))
        warnings.warn(
            f"the models' output vocabularies differ ({sizes}) and no tokenizer says which ids are real: "
            f"routing over the first {min(vocabs)} ids, the larger models' extra logits are dropped; "
            "pass the tokenizer to have this checked",
            UserWarning,
            stacklevel=3,
        )


class TransformersBackend(Backend):
    """Two or more causal LMs, smallest first, that share a tokenizer.

    Args:
        models: loaded ``transformers`` models, or local paths (loaded with
            ``local_files_only=True``), smallest first.
        tokenizer: the shared tokenizer, a list of one per model (checked to be the same), or
            ``None`` (loaded from the paths when there are any; else prompts must be token ids).
        device: where to run (default: CUDA when present, else CPU). Model objects are moved
            (and cast, with ``dtype``) in place, as `torch.nn.Module.to` does.
        dtype: a torch dtype to cast the models to (default: keep theirs).
        names: a name per model (default: its ``name_or_path`` or class name).
        trust_remote_code: passed to ``from_pretrained`` for paths; off unless asked.
        eos_token_id: end-of-sequence id(s) (default: the tokenizer's, else the largest model's
            generation config).

    Raises:
        BackendError: no models, a model that cannot be loaded, tokenizers that differ, a model
            vocabulary smaller than the tokenizer's, models not given smallest first.
    """

    def __init__(
        self,
        models: Sequence[Any],
        tokenizer: Any = None,
        device: Any = None,
        dtype: Any = None,
        *,
        names: Sequence[str] | None = None,
        trust_remote_code: bool = False,
        eos_token_id: int | Sequence[int] | None = None,
    ):
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or len(models) == 0:
            raise BackendError("TransformersBackend needs a list of models (objects or local paths), smallest first")
        models = [os.fspath(m) if isinstance(m, os.PathLike) else m for m in models]  # pathlib paths too
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise BackendError(f"dtype {dtype!r} is not a torch dtype")
            dtype = getattr(torch, dtype)
        self._device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        tokenizers = list(tokenizer) if isinstance(tokenizer, (list, tuple)) else [tokenizer]
        loaded = []
        for i, m in enumerate(models):
            if isinstance(m, str):
                if tokenizer is None:
                    tokenizers.append(self._load_tokenizer(m, trust_remote_code))
                kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
                if dtype is not None:
                    kwargs["dtype"] = dtype
                try:
                    m = AutoModelForCausalLM.from_pretrained(m, **kwargs)
                except (OSError, ValueError, pickle.UnpicklingError) as exc:
                    raise BackendError(
                        f"model {i}: cannot load {models[i]!r} from local files ({_first_line(exc)})"
                    ) from None
            if not hasattr(m, "config") or not callable(m):
                raise BackendError(f"model {i} is not a transformers model: {type(m).__name__}")
            m = m.to(self._device)
            if dtype is not None:
                m = m.to(dtype)
            loaded.append(m.eval())
        self._models = loaded
        self._names = (
            tuple(names)
            if names is not None
            else tuple(str(getattr(m.config, "name_or_path", "") or type(m).__name__) for m in loaded)
        )
        if len(self._names) != len(loaded):
            raise BackendError(f"{len(self._names)} names for {len(loaded)} models")
        self._params = tuple(int(sum(p.numel() for p in m.parameters())) for m in loaded)
        if any(b < a for a, b in pairwise(self._params)):
            raise BackendError(f"models must be given smallest first; parameter counts are {list(self._params)}")
        tokenizers = [t for t in tokenizers if t is not None]
        self.tokenizer = self._shared_tokenizer(tokenizers)
        vocabs = [_output_vocab(m) for m in loaded]
        if self.tokenizer is not None:
            self._vocab = len(self.tokenizer)
            small = [i for i, v in enumerate(vocabs) if v < self._vocab]
            if small:
                i = small[0]
                raise BackendError(
                    f"model {i} ({self._names[i]!r}) has {vocabs[i]} output rows, fewer than the "
                    f"tokenizer's {self._vocab} tokens: it does not share this tokenizer"
                )
        else:
            self._vocab = min(vocabs)
            _warn_vocab_mismatch(vocabs, self._names)
        self._fingerprint = tokenizer_fingerprint(self.tokenizer) if self.tokenizer is not None else ""
        self._eos = self._eos_ids(eos_token_id)
        self._kwargs = [_kwarg_names(m) for m in loaded]

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _load_tokenizer(path: str, trust_remote_code: bool) -> Any:
        try:
            return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _shared_tokenizer(tokenizers: list[Any]) -> Any:
        if not tokenizers:
            return None
        prints = [tokenizer_fingerprint(t) for t in tokenizers]
        for i, p in enumerate(prints[1:], 1):
            if p != prints[0]:
                raise BackendError(
                    f"tokenizer {i} differs from tokenizer 0 (vocabulary fingerprint {p} vs "
                    f"{prints[0]}): routing needs models that share one tokenizer"
                )
        return tokenizers[0]

    def _eos_ids(self, given: int | Sequence[int] | None) -> np.ndarray:
        if given is None and self.tokenizer is not None:
            given = self.tokenizer.eos_token_id
        if given is None:
            gen = getattr(self._models[-1], "generation_config", None)
            given = getattr(gen, "eos_token_id", None) if gen is not None else None
        if given is None:
            given = getattr(self._models[-1].config, "eos_token_id", None)
        if given is None:
            return np.zeros(0, np.int64)
        return np.atleast_1d(np.asarray(given, np.int64))

    # -- description ----------------------------------------------------------------------
    @property
    def num_models(self) -> int:
        return len(self._models)

    @property
    def model_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def param_counts(self) -> tuple[int, ...]:
        return self._params

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def xp(self) -> Any:
        return torch

    @property
    def device(self) -> Any:
        return self._device

    @property
    def models(self) -> tuple[Any, ...]:
        """The loaded models, smallest first."""
        return tuple(self._models)

    @property
    def tokenizer_fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return super().encode(text)
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def default_max_new_tokens(self) -> int:
        gen = getattr(self._models[-1], "generation_config", None)
        value = getattr(gen, "max_new_tokens", None) if gen is not None else None
        return int(value) if value else 256

    # -- one batch ------------------------------------------------------------------------
    def start(self, request: DecodeRequest) -> TransformersSession:
        if any(isinstance(s, str) for s in request.stop) and self.tokenizer is None:
            raise BackendError("stop strings need a tokenizer; give stop token ids instead")
        return TransformersSession(self, request)


def entropy_of(logits: Any) -> Any:
    """Entropy in nats of softmax(logits) per row (`ead_sdk.signals.entropy`, unvalidated: NaN stays NaN)."""
    return entropy(logits, validate=False)


def _warpers(sampling: Sampling) -> Any:
    procs = LogitsProcessorList()
    if not sampling.do_sample:
        return procs
    if sampling.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        procs.append(TopPLogitsWarper(sampling.top_p))
    if sampling.min_p is not None:
        procs.append(MinPLogitsWarper(sampling.min_p))
    if sampling.top_h is not None:
        if TopHLogitsWarper is None:  # pragma: no cover - older transformers
            raise BackendError("top_h sampling needs a transformers version with TopHLogitsWarper")
        procs.append(TopHLogitsWarper(sampling.top_h))
    return procs


class TransformersSession(BatchSession):
    """One batch on a `TransformersBackend`: token buffer, per-model caches, masks and consumed counts."""

    def __init__(self, owner: TransformersBackend, request: DecodeRequest):
        self.owner, self.request = owner, request
        dev = owner.device
        n = request.n
        self.plen = np.array([len(p) for p in request.prompts], np.int64)
        self.pmax = int(self.plen.max())
        # Lane i's token j lives in column off[i] + j: prompts are left-padded, so generated
        # position t is column pmax + t for every lane.
        self.off = self.pmax - self.plen
        host = np.zeros((n, self.pmax + request.max_new_tokens), np.int64)
        for i, p in enumerate(request.prompts):
            host[i, self.off[i] : self.pmax] = p
        self.buf = torch.from_numpy(host).to(dev)
        self.generated = np.zeros((n, request.max_new_tokens), np.int64)
        m = owner.num_models
        self.consumed = np.zeros((m, n), np.int64)
        self.caches: list[Any] = [None] * m
        self.masks: list[Any] = [None] * m
        self.warpers = _warpers(request.sampling)
        self.generator = None
        if request.sampling.do_sample:
            self.generator = torch.Generator(device=dev)
            seed = request.sampling.seed
            self.generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
        self.rows: list[Any] = [None] * m
        self.row_entropy: list[Any] = [None] * m
        ids = [s for s in request.stop if isinstance(s, int)]
        self.stop_ids = np.unique(np.concatenate([owner._eos, np.asarray(ids, np.int64)]))
        self.stop_strings = [s for s in request.stop if isinstance(s, str)]
        self.stop_tail = 2 * max((len(s) for s in self.stop_strings), default=0) + 2
        self.closed = False

    def close(self) -> None:
        """Drop the batch's caches and buffers (the models stay loaded on the backend)."""
        m = self.owner.num_models
        self.caches, self.masks, self.rows, self.row_entropy = [None] * m, [None] * m, [None] * m, [None] * m
        self.closed = True

    @torch.inference_mode()
    def forward(self, model: int, lanes: np.ndarray, position: int) -> Draw:
        if self.closed:
            raise BackendError("this batch session is closed: start a new one")
        owner, dev = self.owner, self.owner.device
        n = self.request.n
        end = self.plen[lanes] + position  # tokens 0 .. end-1 of each lane must be consumed
        start = self.consumed[model, lanes]
        if np.any(start >= end):
            raise BackendError(f"model {model} asked again for generated position {position}")
        width = end - start
        chunk = int(width.max())
        rel = np.arange(chunk)[None, :] - (chunk - width)[:, None]  # right-aligned
        valid = rel >= 0
        seq = start[:, None] + rel
        plan = np.zeros((3, n, chunk), np.int64)  # buffer column, mask, position id
        plan[0, lanes] = np.where(valid, self.off[lanes, None] + seq, 0)
        plan[1, lanes] = valid
        plan[2, lanes] = np.where(valid, seq, 0)
        plan_t = torch.from_numpy(plan).to(dev, non_blocking=True)
        input_ids = torch.gather(self.buf, 1, plan_t[0])
        mask = plan_t[1] if self.masks[model] is None else torch.cat([self.masks[model], plan_t[1]], 1)
        if self.caches[model] is None:
            self.caches[model] = _new_cache(owner._models[model].config)
        cache_kw, keep_kw = owner._kwargs[model]
        kwargs = {cache_kw: self.caches[model], "use_cache": True}
        if keep_kw:
            kwargs[keep_kw] = 1
        out = owner._models[model](input_ids=input_ids, attention_mask=mask, position_ids=plan_t[2], **kwargs)
        self.masks[model] = mask
        self.consumed[model, lanes] = end
        index = plan_t.new_tensor(lanes) if lanes.size != n else None
        logits = out.logits[:, -1, : owner.vocab_size]
        if index is not None:
            logits = logits.index_select(0, index)
        logits = logits.float()
        h = entropy_of(logits)
        need_lp = self.request.logprobs is not None or self.request.keep_rows
        lp = torch.log_softmax(logits, -1) if need_lp else None
        token = self._draw(logits, index, position)
        if self.request.keep_rows:
            if self.rows[model] is None:
                self.rows[model] = torch.zeros((n, owner.vocab_size), dtype=torch.float32, device=dev)
                self.row_entropy[model] = torch.zeros((n,), dtype=torch.float32, device=dev)
            target = index if index is not None else slice(None)
            self.rows[model][target] = lp
            self.row_entropy[model][target] = h
        want = self.request.logprobs
        if want is None:
            return Draw(entropy=h, token=token)
        if want == "full":
            return Draw(entropy=h, token=token, logprobs=torch.sort(lp, -1, descending=True).values)
        top = torch.topk(lp, int(want), dim=-1, sorted=True)
        return Draw(entropy=h, token=token, logprobs=top.values, token_ids=top.indices)

    def _draw(self, logits: Any, index: Any, position: int) -> Any:
        if self.generator is None:
            return torch.argmax(logits, -1)
        rows = self.buf[:, : self.pmax + position]
        if index is not None:
            rows = rows.index_select(0, index)
        scores = self.warpers(rows, logits)
        probs = _drawable(torch.softmax(scores, -1))
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    @torch.inference_mode()
    def append(self, position: int, tokens: Any, lanes: np.ndarray) -> None:
        self.buf[:, self.pmax + position] = tokens

    def finished(self, position: int, lanes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        self.generated[lanes, position] = tokens
        done = np.isin(tokens, self.stop_ids)
        if self.stop_strings:
            tok = self.owner.tokenizer
            lo = max(0, position + 1 - self.stop_tail)
            for j, lane in enumerate(lanes.tolist()):
                if not done[j]:
                    text = tok.decode(self.generated[lane, lo : position + 1].tolist())
                    done[j] = any(s in text for s in self.stop_strings)
        return done

    def record_rows(self, model: int, lanes: np.ndarray, tokens: np.ndarray, k: int) -> RowRecord:
        if self.rows[model] is None:
            raise BackendError("record_rows needs a request with keep_rows=True")
        dev = self.owner.device
        idx = torch.from_numpy(np.asarray(lanes, np.int64)).to(dev)
        rows = self.rows[model].index_select(0, idx)
        tok = torch.from_numpy(np.asarray(tokens, np.int64)).to(dev)
        return _row_record(rows, self.row_entropy[model].index_select(0, idx), tok, k)

    @torch.inference_mode()
    def score(self, model: int, lanes: np.ndarray, generated: Sequence[np.ndarray], k: int) -> list[RowRecord]:
        owner, dev = self.owner, self.owner.device
        out = []
        for lane, gen in zip(lanes.tolist(), generated, strict=True):
            gen = np.asarray(gen, np.int64)
            if gen.size == 0:
                out.append(_row_record(None, None, None, k, empty=True))
                continue
            seq = np.concatenate([np.asarray(self.request.prompts[lane], np.int64), gen[:-1]])
            ids = torch.from_numpy(seq)[None].to(dev)
            logits = owner._models[model](input_ids=ids, use_cache=False).logits[0]
            logits = logits[self.plen[lane] - 1 :, : owner.vocab_size].float()
            lp = torch.log_softmax(logits, -1)
            tok = torch.from_numpy(gen).to(dev)
            out.append(_row_record(lp, entropy_of(logits), tok, k))
        return out


def _drawable(probs: Any) -> Any:
    """Rows of NaN or +inf logits made uniform so the draw itself cannot fail.

    Such a row's entropy is NaN, and the decode loop refuses it right after this step with a
    `BackendError` naming the model, lane and position (as for greedy decoding); without this,
    ``torch.multinomial`` would raise its own error first. No host sync.
    """
    ok = torch.isfinite(probs).all(-1, keepdim=True) & (probs.sum(-1, keepdim=True) > 0)
    return torch.where(ok, probs, torch.ones_like(probs))


def _row_record(lp: Any, h: Any, tokens: Any, k: int, empty: bool = False) -> RowRecord:
    if empty:
        z = np.zeros(0, np.float32)
        return RowRecord(z, z, np.zeros((0, k), np.int32) if k else None, np.zeros((0, k), np.float32) if k else None)
    token_lp = lp.gather(1, tokens[:, None])[:, 0]
    if k:
        top = torch.topk(lp, k, dim=-1, sorted=True)
        return RowRecord(
            entropy=h.cpu().numpy(),
            token_logprob=token_lp.cpu().numpy(),
            top_ids=top.indices.cpu().numpy().astype(np.int32),
            top_logprobs=top.values.cpu().numpy(),
        )
    return RowRecord(entropy=h.cpu().numpy(), token_logprob=token_lp.cpu().numpy())
