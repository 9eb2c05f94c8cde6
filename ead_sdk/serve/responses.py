"""OpenAI response bodies and stream chunks, plus the ``ead`` extension object they carry.

The standard fields are exactly the OpenAI API's, so unmodified clients read them; the routing
details ride in one extra key, ``"ead"``: per choice, the model that emitted each token
(``routes``, indices into ``models``), the lane's cost report and its hand-off latencies; per
response, the cost report of all its lanes.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ead_sdk.cost import CostModel, sum_reports
from ead_sdk.serve.lanes import LaneOutcome


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None) -> dict:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def finite(x: Any) -> Any:
    """``x`` with NaN and infinite floats as ``None`` (JSON has neither), through dicts and lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def new_id(prefix: str) -> str:
    """A fresh response id (``cmpl-...``, ``chatcmpl-...``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(outcomes: Sequence[LaneOutcome]) -> dict[str, int]:
    """The standard ``usage`` object summed over ``outcomes``."""
    prompt = sum(len(o.prompt) for o in outcomes)
    completion = sum(len(o.tokens) for o in outcomes)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def handoff_latencies(result: Any) -> list[float]:
    """The hand-off latencies (seconds) of a router `LaneResult`, ``[]`` when it has none."""
    return [float(s) for s in (getattr(result, "handoff_latencies", None) or ())]


def lane_extension(outcome: LaneOutcome) -> dict[str, Any]:
    """A choice's ``ead`` object: its routes, token ids, cost report and hand-off latencies."""
    report = getattr(outcome.result, "report", None)
    return {
        "index": outcome.index,
        "routes": list(outcome.models),
        "token_ids": list(outcome.tokens),
        "cost": None if report is None else finite(report.as_dict()),
        "handoff_latency_s": handoff_latencies(outcome.result),
    }


def request_extension(
    outcomes: Sequence[LaneOutcome], model_names: Sequence[str], cost_model: CostModel | None, *, choices: bool = True
) -> dict[str, Any]:
    """A response's ``ead`` object: the models, each choice's routes and costs, the summed cost report."""
    reports = [o.result.report for o in outcomes if getattr(o.result, "report", None) is not None]
    total = sum_reports(reports, cost_model) if reports and cost_model is not None else None
    body: dict[str, Any] = {"models": list(model_names), "cost": None if total is None else finite(total.as_dict())}
    if choices:
        body["choices"] = [lane_extension(o) for o in outcomes]
    return body


def completion_body(
    rid: str, model: str, outcomes: Sequence[LaneOutcome], extension: dict[str, Any], created: int
) -> dict[str, Any]:
    """A whole ``/v1/completions`` answer."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": o.index, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason} for o in outcomes
        ],
        "usage": usage(outcomes),
        "ead": extension,
    }


def chat_body(rid: str, model: str, outcome: LaneOutcome, extension: dict[str, Any], created: int) -> dict[str, Any]:
    """A whole ``/v1/chat/completions`` answer (one choice)."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.text},
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": usage([outcome]),
        "ead": extension,
    }


class ChunkMaker:
    """Builds one streamed answer's chunks (same id, model and creation time on each)."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        self.model = model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A chunk with ``choices`` and any extra top-level keys (``usage``, ``ead``)."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def choice(self, index: int, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict:
        """One choice's delta: the chat form (``delta``) or the completion form (``text``)."""
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
