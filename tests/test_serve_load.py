"""Load on loopback: 200 requests at concurrency 16, none lost or duplicated, all well formed, /metrics agreeing."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_harness import ChatToyTokenizer, running_server, toy_ladder  # noqa: E402

from ead_sdk.serve.state import ServeConfig  # noqa: E402
from ead_sdk.specs import load_policy  # noqa: E402

REQUESTS = 200
CONCURRENCY = 16


def _frames(text: str) -> list:
    frames = [f[len("data: ") :] for f in text.split("\n\n") if f.strip()]
    assert frames[-1] == "[DONE]", frames[-3:]
    return [json.loads(f) for f in frames[:-1]]


async def _streamed(c: httpx.AsyncClient, url: str, i: int) -> dict:
    body = {"prompt": [i % 26, (i * 7) % 26], "max_tokens": 5 + i % 20, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    r = await c.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 200, r.text
    chunks = _frames(r.text)
    assert len({ch["id"] for ch in chunks}) == 1
    tokens = [t for ch in chunks[:-2] for t in ch["ead"]["token_ids"]]
    final, usage = chunks[-2], chunks[-1]["usage"]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert tokens == final["ead"]["token_ids"] and usage["completion_tokens"] == len(tokens)
    assert "".join(ch["choices"][0]["text"] for ch in chunks[:-1]) == _text(tokens)
    return {"id": chunks[0]["id"], "tokens": len(tokens), "routes": final["ead"]["routes"]}


async def _whole(c: openai.AsyncOpenAI, i: int) -> dict:
    if i % 2:
        r = await c.completions.create(model="ead-router", prompt=[i % 26, 3], max_tokens=5 + i % 20, temperature=0)
        text = r.choices[0].text
    else:
        messages = [{"role": "user", "content": "abc"[: 1 + i % 3]}]
        r = await c.chat.completions.create(model="ead-router", messages=messages, max_tokens=5 + i % 20)
        text = r.choices[0].message.content
    choice = r.model_extra["ead"]["choices"][0]
    assert r.usage.completion_tokens == len(choice["token_ids"]) and text == _text(choice["token_ids"])
    return {"id": r.id, "tokens": r.usage.completion_tokens, "routes": choice["routes"]}


def _text(tokens: list[int]) -> str:
    return "".join("" if t == 25 else chr(ord("a") + t) for t in tokens)


async def _load(url: str) -> list[dict]:
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=120) as raw:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        async def one(i: int) -> dict:
            async with gate:
                return await (_streamed(raw, url, i) if i % 3 == 0 else _whole(sdk, i))

        try:
            return await asyncio.gather(*[one(i) for i in range(REQUESTS)])
        finally:
            await sdk.close()


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_200_requests_at_concurrency_16_none_lost_all_well_formed_metrics_agree():
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 3.0, "window": 1}})
    engines = toy_ladder()
    config = ServeConfig(max_lanes=CONCURRENCY)
    with running_server(engines, policy, ChatToyTokenizer(engines[0].tokenizer), config) as srv:
        answers = asyncio.run(_load(srv.url))
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert len(answers) == REQUESTS and len({a["id"] for a in answers}) == REQUESTS
    completed = sum(
        _metric(metrics, "ead_requests_total", f'{{endpoint="{e}",outcome="completed"}}')
        for e in ("completions", "chat")
    )
    assert completed == REQUESTS
    for m, name in enumerate(("small", "large")):
        got = sum(a["routes"].count(m) for a in answers)
        assert _metric(metrics, "ead_tokens_total", f'{{model="{name}"}}') == got
    assert sum(a["tokens"] for a in answers) == sum(
        _metric(metrics, "ead_tokens_total", f'{{model="{n}"}}') for n in ("small", "large")
    )
    assert _metric(metrics, "ead_lanes_in_flight") == 0
