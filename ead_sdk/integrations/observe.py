"""`PolicyObserver`: a transformers logits processor that watches, never steers.

Add it to any ``model.generate(...)`` call to get, for every step and lane, the entropy of the
distribution the model produced and the model the policy *would* route the next token to, and
optionally a trace in the project's format, so that a team can log traces from its existing
generation code. It returns the scores it is given unchanged (the same object), so the output
of ``generate`` is exactly what it would be without it.

The scores a processor receives are the model's float32 logits after ``generate``'s own
non-sampling processors (repetition penalty, bad words, forced tokens...) and *before* the
sampling warpers (temperature, top-k, top-p, min-p): with none of the former configured, the
entropy is that of the model's raw distribution, as in `ead_sdk.generate`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from ead_sdk.backend import LogprobRequest
from ead_sdk.backends.hf import entropy_of
from ead_sdk.decision import decide_checked
from ead_sdk.errors import ArgumentTypeError, BackendError, ObserverError, ReplayOnlyPolicyError
from ead_sdk.interface import Policy, Step
from ead_sdk.signal_spec import signal_of
from ead_sdk.signals import topk_entropy_estimate
from ead_sdk.specs import load_policy

RECORDED_BY = "ead_sdk.integrations.PolicyObserver"


@dataclass(frozen=True)
class ObservedLane:
    """One sequence as the observer saw it.

    Attributes:
        prompt: the prompt's token ids (left padding removed).
        tokens: the generated token ids, up to and including the first end-of-sequence id.
        entropy: ``(T,)`` entropy in nats of the scores at each generated position.
        token_logprob: ``(T,)`` log-probability of each generated token under those scores.
        routes: ``(T,)`` the model the policy would route the *next* token to, after each position.
        finished: whether the lane ended with an end-of-sequence id (else it ran to the limit).
    """

    prompt: np.ndarray
    tokens: np.ndarray
    entropy: np.ndarray
    token_logprob: np.ndarray
    routes: np.ndarray
    finished: bool


@dataclass(frozen=True)
class Observation:
    """Every lane of one ``generate`` call, in batch order."""

    lanes: tuple[ObservedLane, ...]
    model_index: int

    def __len__(self) -> int:
        return len(self.lanes)

    def __getitem__(self, lane: int) -> ObservedLane:
        return self.lanes[lane]


class _Run:
    """The per-step values of one ``generate`` call, kept on the scores' device until `finish`."""

    def __init__(self, input_ids: torch.Tensor, state: Any, eos: torch.Tensor):
        self.n, self.plen = int(input_ids.shape[0]), int(input_ids.shape[1])
        self.prompt = input_ids.detach().clone()
        self.device = input_ids.device
        self.state = state
        self.live = torch.ones(self.n, dtype=torch.bool, device=self.device)
        self.eos = eos.to(self.device)  # copied once per call, not once per step
        self.steps = 0
        self.entropy: list[torch.Tensor] = []
        self.routes: list[torch.Tensor] = []
        self.token_lp: list[torch.Tensor] = []
        self.top_ids: list[torch.Tensor] = []
        self.top_lp: list[torch.Tensor] = []
        self.last_lp: torch.Tensor | None = None

    def continues(self, input_ids: torch.Tensor) -> bool:
        """Whether ``input_ids`` is this run's next step (shapes only: no host sync)."""
        return (
            input_ids.shape[0] == self.n
            and input_ids.shape[1] == self.plen + self.steps
            and input_ids.device == self.device
        )


def _topk_estimate(lp: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` entropy estimate of full log-probability rows, on their device."""
    top = torch.topk(lp, min(k, lp.shape[-1]), dim=-1, sorted=True).values
    return topk_entropy_estimate(top, lp.shape[-1], validate=False)


class PolicyObserver(LogitsProcessor):
    """Compute entropy and a policy's would-be routes at every ``generate`` step; change nothing.

    Args:
        policy: a `ead_sdk.Policy`, or its spec (a dict, a JSON string or a ``spec.json`` path).
        model: the model being observed (optional): gives the trace its name, parameter count
            and end-of-sequence / padding ids.
        model_index: which rung of the policy's ladder the observed model is (0 = smallest):
            every `Step.model` the policy sees says this model produced the distribution.
        num_models: the size of the ladder the policy routes over (checked by the policy).
        record: where to write a single-model trace (a new Arrow IPC stream path, or a
            `ead_sdk.traces.TraceWriter` with one model); ``None`` to keep results in memory only.
        record_k: top-k log-probabilities recorded per position (for a path).
        logprobs: what `Step.logprobs` holds for the policy: top-``k``, ``"full"`` or ``None``.
        eos_token_id: end-of-sequence id(s) ending a lane (default: those of the observed
            ``generate`` call, which may override the model's generation config).
        pad_token_id: the padding id stripped from the left of prompts when `finish` gets no
            attention mask (default: the model's generation config).
        tokenizer: the tokenizer, for the trace's tokenizer fingerprint (optional).
        model_name: the model's name in the trace (default: its ``name_or_path``).
        param_count: the model's parameter count in the trace (default: counted from ``model``).

    A policy whose signal is the top-k estimate (``policy.signal``) sees that estimate, computed
    from the scores' top-k, as `Step.entropy`; results and traces keep the exact entropy.

    After ``generate`` returns, call `finish` with its output: the last generated token only
    appears there (a processor never sees the token drawn at the final step). For the same
    reason `Step.token` is ``None`` when the policy decides: the token is drawn after the
    processors run. The observer holds one ``generate`` call at a time: use one per thread.
    """

    def __init__(
        self,
        policy: Policy | Mapping[str, Any] | str | os.PathLike[str],
        *,
        model: Any = None,
        model_index: int = 0,
        num_models: int = 2,
        record: Any = None,
        record_k: int = 0,
        logprobs: LogprobRequest = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        tokenizer: Any = None,
        model_name: str | None = None,
        param_count: int | None = None,
    ):
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        if getattr(self.policy, "replay_only", False):
            raise ReplayOnlyPolicyError(
                f"policy {self.policy.name!r} reads replay-only look-ahead and cannot observe live decoding"
            )
        if isinstance(model_index, bool) or not isinstance(model_index, int) or not 0 <= model_index < num_models:
            raise ObserverError(f"model_index must be an integer in [0, {num_models}), got {model_index!r}")
        self.policy.check_models(num_models)
        bad_k = isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 1
        if logprobs is not None and logprobs != "full" and bad_k:
            raise ObserverError(f"logprobs must be None, 'full' or an integer >= 1, got {logprobs!r}")
        if isinstance(record_k, bool) or not isinstance(record_k, int) or record_k < 0:
            raise ObserverError(f"record_k must be an integer >= 0, got {record_k!r}")
        self.model_index, self.num_models = model_index, num_models
        self.logprobs, self.record_k = logprobs, record_k
        self._signal_k = signal_of(self.policy).k  # a top-k signal: the policy sees the estimate
        gen = getattr(model, "generation_config", None)
        self._eos_given = eos_token_id is not None
        if eos_token_id is None and gen is not None:
            eos_token_id = gen.eos_token_id
        if pad_token_id is None and gen is not None:
            pad_token_id = gen.pad_token_id
        self.eos = torch.as_tensor(np.atleast_1d(np.asarray([] if eos_token_id is None else eos_token_id, np.int64)))
        self.pad_token_id = pad_token_id
        if model_name is None and model is not None:
            model_name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        self.model_name = model_name or "model"
        if param_count is None and model is not None:
            param_count = int(sum(p.numel() for p in model.parameters()))
        self.param_count = param_count
        self.tokenizer = tokenizer
        self._record, self._writer, self._owns_writer = record, None, False
        if record is not None and not isinstance(record, (str, os.PathLike)):
            meta = getattr(record, "meta", None)
            if meta is None or not callable(getattr(record, "write", None)):
                raise ArgumentTypeError(f"record must be a path or a TraceWriter, got {type(record).__name__}")
            if meta.num_models != 1:
                raise ObserverError(
                    f"the observer writes single-model traces; the TraceWriter has {meta.num_models} models"
                )
            self._writer, self.record_k = record, int(meta.k)
        elif record is not None and (param_count is None or param_count < 1):
            raise ObserverError("recording a trace needs the model's parameter count: pass model= or param_count=")
        self._run: _Run | None = None
        self._sequences = 0

    # -- the processor --------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        run = self._run
        if run is None or not run.continues(input_ids):
            if run is not None and run.steps:
                warnings.warn(
                    "PolicyObserver: a new generate call started before finish() was called for the "
                    "previous one; its observations are discarded",
                    stacklevel=2,
                )
            state = self.policy.init_state(int(input_ids.shape[0]), torch, input_ids.device)
            run = self._run = _Run(input_ids, state, self._run_eos())
        n, t = run.n, run.steps
        if t > 0:  # the token drawn at the previous step is now the last column
            tok = input_ids[:, -1]
            run.token_lp.append(run.last_lp.gather(1, tok[:, None])[:, 0])
            run.live = run.live & ~torch.isin(tok, run.eos)
        logits = scores.float()
        lp = torch.log_softmax(logits, -1)
        h = entropy_of(logits)
        shown = h if self._signal_k is None else _topk_estimate(lp, self._signal_k)
        step_lp, step_ids = None, None
        if self.logprobs == "full":
            step_lp = torch.sort(lp, -1, descending=True).values
        elif self.logprobs is not None:
            top = torch.topk(lp, min(int(self.logprobs), lp.shape[-1]), dim=-1, sorted=True)
            step_lp, step_ids = top.values, top.indices
        step = Step(
            entropy=shown,
            model=torch.full((n,), self.model_index, dtype=torch.int64, device=run.device),
            index=torch.full((n,), t, dtype=torch.int64, device=run.device),
            live=run.live,
            logprobs=step_lp,
            token_ids=step_ids,
            vocab_size=int(lp.shape[-1]),
        )
        routes, run.state = decide_checked(self.policy, run.state, step, n, t)
        run.entropy.append(h)
        run.routes.append(torch.as_tensor(routes).to(torch.int64))
        if self.record_k:
            top = torch.topk(lp, min(self.record_k, lp.shape[-1]), dim=-1, sorted=True)
            run.top_ids.append(top.indices)
            run.top_lp.append(top.values)
        run.last_lp = lp
        run.steps += 1
        return scores

    # -- after generate -------------------------------------------------------------------
    def finish(self, output: Any, attention_mask: torch.Tensor | None = None) -> Observation:
        """Close the ``generate`` call whose ``output`` (ids or a ``GenerateOutput``) is given.

        Writes one trace row per lane when recording, and returns what was observed.

        Args:
            output: what ``generate`` returned (a LongTensor of prompt + generated ids, or an
                output object with ``sequences``).
            attention_mask: the prompt's attention mask, to strip left padding exactly
                (without it, leading ``pad_token_id`` entries are stripped).

        Raises:
            EadError: no observed call, or ``output`` that is not the observed call's.
        """
        run = self._run
        if run is None or run.steps == 0:
            raise ObserverError("PolicyObserver.finish: no generate call was observed (is it in logits_processor?)")
        seq = getattr(output, "sequences", output)
        if not isinstance(seq, torch.Tensor) or seq.ndim != 2 or seq.shape[0] != run.n:
            raise ObserverError(f"PolicyObserver.finish: expected the ({run.n}, length) ids generate returned")
        total = int(seq.shape[1]) - run.plen
        if total < 1 or total > run.steps or not torch.equal(seq[:, : run.plen].to(run.device), run.prompt):
            raise ObserverError(
                f"PolicyObserver.finish: these sequences are not the observed call's "
                f"({run.steps} steps observed after a {run.plen}-token prompt, got length {seq.shape[1]})"
            )
        gen = seq[:, run.plen :].to(run.device)
        token_lp = run.token_lp[:total]
        if len(token_lp) < total:  # the final step's token only appears in the output
            token_lp.append(run.last_lp.gather(1, gen[:, total - 1, None])[:, 0])
        host = {
            "gen": gen.cpu().numpy(),
            "entropy": torch.stack(run.entropy[:total], 1).cpu().numpy(),
            "routes": torch.stack(run.routes[:total], 1).cpu().numpy(),
            "token_lp": torch.stack(token_lp, 1).cpu().numpy(),
            "prompt": run.prompt.cpu().numpy(),
        }
        if self.record_k:
            host["top_ids"] = torch.stack(run.top_ids[:total], 1).cpu().numpy()
            host["top_lp"] = torch.stack(run.top_lp[:total], 1).cpu().numpy()
        mask = None if attention_mask is None else np.asarray(attention_mask.cpu().numpy()[:, : run.plen], bool)
        vocab = int(run.last_lp.shape[-1])
        self._run = None
        eos = run.eos.cpu().numpy()
        lanes = []
        for i in range(run.n):
            ends = np.flatnonzero(np.isin(host["gen"][i], eos))
            length = int(ends[0]) + 1 if ends.size else total
            lanes.append(
                ObservedLane(
                    prompt=self._prompt(host["prompt"][i], None if mask is None else mask[i]),
                    tokens=host["gen"][i, :length],
                    entropy=host["entropy"][i, :length],
                    token_logprob=host["token_lp"][i, :length],
                    routes=host["routes"][i, :length],
                    finished=bool(ends.size),
                )
            )
        if self._record is not None:
            self._write(lanes, host, vocab)
        return Observation(lanes=tuple(lanes), model_index=self.model_index)

    def _run_eos(self) -> torch.Tensor:
        """The end-of-sequence ids of the ``generate`` call now starting.

        Those given to the observer; else those ``generate`` was called with (read once per call
        from its generation config: ``generate(eos_token_id=[])`` ends no lane); else the model's.
        """
        if self._eos_given:
            return self.eos
        config = _calling_generation_config()
        if config is None:
            return self.eos
        ids = getattr(config, "eos_token_id", None)
        return torch.as_tensor(np.atleast_1d(np.asarray([] if ids is None else ids, np.int64)))

    def _prompt(self, row: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if mask is not None:
            return row[mask]
        if self.pad_token_id is None:
            return row
        keep = np.flatnonzero(row != self.pad_token_id)
        return row[keep[0] :] if keep.size else row[:0]

    def _write(self, lanes: list[ObservedLane], host: dict[str, np.ndarray], vocab: int) -> None:
        from ead_sdk.traces import SequenceTrace

        writer = self._writer or self._open(vocab)
        if int(writer.meta.vocab_size) != vocab:
            raise ObserverError(f"the trace writer's vocabulary is {writer.meta.vocab_size}; the scores have {vocab}")
        for i, lane in enumerate(lanes):
            t = lane.tokens.size
            top = {}
            if self.record_k:
                top = {"top_ids": host["top_ids"][i, :t, None], "top_logprobs": host["top_lp"][i, :t, None]}
            writer.write(
                SequenceTrace.build(
                    prompt_ids=lane.prompt,
                    token_ids=lane.tokens,
                    emitted_by=np.zeros(t, np.int8),
                    entropy=lane.entropy[:, None],
                    token_logprob=lane.token_logprob[:, None],
                    fields={"sequence_id": self._sequences, "policy_routes": lane.routes.tolist()},
                    **top,
                )
            )
            self._sequences += 1
        writer.flush()

    def _open(self, vocab: int) -> Any:
        from ead_sdk.traces import FORMAT_VERSION, TraceMeta, TraceWriter

        fingerprint = ""
        if self.tokenizer is not None:
            from ead_sdk.backends.hf import tokenizer_fingerprint

            fingerprint = tokenizer_fingerprint(self.tokenizer)
        if self.record_k > vocab:
            raise BackendError(f"record_k {self.record_k} is larger than the vocabulary ({vocab})")
        meta = TraceMeta(
            format_version=FORMAT_VERSION,
            model_names=(self.model_name,),
            param_counts=(int(self.param_count),),
            vocab_size=vocab,
            tokenizer_fingerprint=fingerprint,
            k=self.record_k,
            generation={
                "recorded_by": RECORDED_BY,
                "policy": self.policy.spec(),
                "model_index": self.model_index,
                "num_models": self.num_models,
                "entropy_of": "processor scores: float32 logits before sampling warpers",
                "policy_routes": "per-sequence field: the model the policy would route the next token to",
            },
        )
        self._writer = TraceWriter(self._record, meta)
        self._owns_writer = True
        return self._writer

    def close(self) -> None:
        """Close the trace stream this observer opened (a writer given to it stays open)."""
        if self._owns_writer and self._writer is not None:
            self._writer.close()

    def __enter__(self) -> PolicyObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _calling_generation_config() -> Any:
    """The generation config of the ``generate`` call running this processor, if one is on the stack.

    A logits processor is handed only ids and scores; the ids that end a lane are in the config
    that ``generate`` prepared (its own arguments over the model's defaults), a local of its frames.
    """
    frame = sys._getframe(1)
    while frame is not None:
        config = frame.f_locals.get("generation_config")
        if config is not None and hasattr(config, "eos_token_id") and hasattr(config, "max_new_tokens"):
            return config
        frame = frame.f_back
    return None
