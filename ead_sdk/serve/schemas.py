"""OpenAI request bodies read into frozen settings, each bad field refused with the field named.

`read_completion` and `read_chat` turn a decoded JSON body into a `CompletionRequest` or a
`ChatRequest`; anything the server cannot honour (``n > 1``, ``logprobs``, penalties, tools) is a
`ServeRequestError` with ``param`` set, answered as a 400 with an OpenAI-style error body rather
than silently ignored. Fields that do not change the output (``user``, ``metadata``) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ead_sdk.backend import Sampling
from ead_sdk.errors import ServeRequestError

MAX_STOP_STRINGS = 4
"""The most stop strings a request may give (the OpenAI API's limit)."""

COMPLETION_DEFAULT_MAX_TOKENS = 16
"""``/v1/completions`` without ``max_tokens`` produces this many tokens at most (the OpenAI default)."""

# Fields whose effect this server cannot reproduce: refused when set to anything but the neutral value.
_UNSUPPORTED = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}


@dataclass(frozen=True)
class GenerationSettings:
    """How every lane of one request generates.

    Attributes:
        max_tokens: the most tokens per lane.
        sampling: temperature, top-p and seed (``temperature=0`` is greedy).
        stop: stop strings; the text ends before the first one found (not included).
        stream: answer as server-sent events.
        include_usage: with ``stream``, send a last chunk holding ``usage`` (``stream_options``).
        policy: the request's ``ead`` extension object (a policy override), or ``None``.
    """

    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    policy: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """A ``/v1/completions`` request: one lane per prompt (text, or token ids)."""

    model: str | None
    prompts: tuple[str | tuple[int, ...], ...]
    settings: GenerationSettings


@dataclass(frozen=True)
class ChatRequest:
    """A ``/v1/chat/completions`` request: the conversation as ``{"role", "content"}`` text messages."""

    model: str | None
    messages: tuple[dict[str, str], ...]
    settings: GenerationSettings


def bad(message: str, param: str | None = None, *, status: int = 400, code: str | None = None) -> ServeRequestError:
    """An invalid-request error about ``param``."""
    return ServeRequestError(message, status=status, param=param, code=code)


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{name} must be a number, got {value!r:.40}", name)
    if not lo <= value <= hi:
        raise bad(f"{name} must be in [{lo}, {hi}], got {value}", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer, got {value!r:.40}", name)
    if not lo <= value <= hi:
        raise bad(f"{name} must be in [{lo}, {hi}], got {value}", name)
    return value


def _sampling(body: Mapping[str, Any]) -> Sampling:
    """OpenAI's temperature/top_p/seed as a `Sampling`: temperature 0 is greedy, the default is 1."""
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad("top_p must be in (0, 1], got 0", "top_p")
    seed = _integer(body, "seed", None, 0, 2**63 - 1)
    if temperature == 0.0:
        return Sampling(do_sample=False, seed=seed)
    return Sampling(do_sample=True, temperature=temperature, top_p=None if top_p == 1.0 else top_p, seed=seed)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    return tuple(stops)


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise bad("stream_options is only allowed with stream=true", "stream_options")
    if not isinstance(options, Mapping):
        raise bad("stream_options must be an object", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad("stream_options.include_usage must be a boolean", "stream_options.include_usage")
    return include


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name, neutral in _UNSUPPORTED.items():
        if name in body and body[name] not in neutral:
            raise bad(f"{name}={body[name]!r:.60} is not supported by ead serve", name)


def _settings(body: Mapping[str, Any], default_max: int, max_cap: int, limit_name: str) -> GenerationSettings:
    _refuse_unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream must be a boolean", "stream")
    max_tokens = _integer(body, limit_name, None, 1, max_cap)
    if limit_name != "max_tokens" and max_tokens is None:  # chat accepts the older name too
        max_tokens = _integer(body, "max_tokens", None, 1, max_cap)
    policy = body.get("ead")
    if policy is not None and not isinstance(policy, Mapping):
        raise bad("ead must be an object (the policy override)", "ead")
    return GenerationSettings(
        max_tokens=default_max if max_tokens is None else max_tokens,
        sampling=_sampling(body),
        stop=_stop(body),
        stream=stream,
        include_usage=_stream_options(body, stream),
        policy=policy,
    )


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model must be a string", "model")
    return model


def _prompts(prompt: Any) -> tuple[str | tuple[int, ...], ...]:
    """OpenAI's four prompt shapes: a string, a list of strings, token ids, a list of token-id lists."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise bad("prompt must be a string, a list of strings, or token ids (a list of integers, or lists of them)")
    out: list[str | tuple[int, ...]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str) and p:
            out.append(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p):
            out.append(tuple(p))
        else:
            raise bad(f"prompt {i}: must be a non-empty string or a non-empty list of token ids (integers >= 0)")
    return tuple(out)


def read_completion(body: Any, max_cap: int) -> CompletionRequest:
    """A ``/v1/completions`` body as a `CompletionRequest`; ``max_cap`` bounds ``max_tokens``."""
    if not isinstance(body, Mapping):
        raise bad("the request body must be a JSON object")
    if "prompt" not in body:
        raise bad("prompt is required", "prompt")
    try:
        prompts = _prompts(body["prompt"])
    except ServeRequestError as exc:
        raise bad(str(exc), "prompt") from None
    default_max = min(COMPLETION_DEFAULT_MAX_TOKENS, max_cap)
    return CompletionRequest(_model(body), prompts, _settings(body, default_max, max_cap, "max_tokens"))


def _message(i: int, message: Any) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise bad(f"{where} must be an object with a string 'role'", where)
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content: only text parts are supported", f"{where}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad(f"{where}.content must be a string or a list of text parts", f"{where}.content")
    return {"role": message["role"], "content": content}


def read_chat(body: Any, max_cap: int) -> ChatRequest:
    """A ``/v1/chat/completions`` body as a `ChatRequest`; ``max_cap`` bounds ``max_completion_tokens``."""
    if not isinstance(body, Mapping):
        raise bad("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    settings = _settings(body, max_cap, max_cap, "max_completion_tokens")
    return ChatRequest(_model(body), tuple(_message(i, m) for i, m in enumerate(messages)), settings)
