"""ead serve in front of OpenAI-compatible upstreams (the fake server): faults, start-up checks, the CLI end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx_sse")
openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

from serve_harness import running_server, sse_events  # noqa: E402

from ead_sdk.backends.openai_engine import OpenAIEngine  # noqa: E402
from ead_sdk.serve.state import ServeConfig  # noqa: E402
from ead_sdk.specs import load_policy  # noqa: E402
from ead_sdk.testing.fake_openai import FakeOpenAI, Fault, ToyLM  # noqa: E402
from ead_sdk.testing.vllm_server import free_port  # noqa: E402

VOCAB = 64
TOPK_SPEC = {
    "policy": "rolling_entropy",
    "params": {"threshold": 1.5, "window": 1},
    "escalation": "retry",
    "signal": {"kind": "topk_entropy", "k": 8},
}


def word_tokenizer(folder: Path):
    """A Hugging Face tokenizer whose token i is the word ``t{i}`` (the fake upstream's token text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0")
    fast.chat_template = "{% for m in messages %}{{ m.content }} {% endfor %}t1"
    fast.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("tok"))


def _breaks(prompt_start: int, fault: Fault):
    return lambda request: fault if request.body["prompt"][0] == prompt_start else None


@pytest.mark.parametrize(
    "fault",
    [
        Fault.disconnect(after=3),
        Fault.malformed(after=3),
        Fault.error_event(after=3),
        Fault.http_error(503),
        Fault.stall(after=3),
    ],
    ids=lambda f: f.kind,
)
def test_an_upstream_fault_ends_only_its_request_with_a_clear_error(tokenizer, fault):
    small = FakeOpenAI(ToyLM(VOCAB, seed=1), model="small", faults=_breaks(7, fault), token_delay=0.002)
    large = FakeOpenAI(ToyLM(VOCAB, seed=2), model="large", token_delay=0.002)
    policy = load_policy({**TOPK_SPEC, "params": {"threshold": 50.0}})  # the small model only: its faults show
    with small, large:
        engines = [
            OpenAIEngine(small.base_url, name="small", num_params=100, tokenizer=tokenizer, read_timeout=1.0),
            OpenAIEngine(large.base_url, name="large", num_params=1000, tokenizer=tokenizer, read_timeout=1.0),
        ]
        config = ServeConfig(upstream_timeout=1.0)
        with running_server(lambda: engines, policy, tokenizer, config) as srv:
            answers = asyncio.run(_three(srv.url))
            metrics = httpx.get(f"{srv.url}/metrics").text
    ok1, broken, ok2 = (sse_events(a.text) for a in answers)
    for ok in (ok1, ok2):
        assert ok[-1] == "[DONE]" and ok[-2]["choices"][0]["finish_reason"] == "length"
        assert len(ok[-2]["ead"]["token_ids"]) == 20
    assert broken[-1] == "[DONE]" and broken[-2]["error"]["type"] == "upstream_error"
    assert "small" in broken[-2]["error"]["message"]
    assert 'ead_upstream_errors_total{engine="small"} 1.0' in metrics
    assert 'ead_requests_total{endpoint="completions",outcome="completed"} 2.0' in metrics


async def _three(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as c:
        good = {"prompt": [1, 2, 3], "max_tokens": 20, "temperature": 0, "stream": True}
        bodies = [good, {**good, "prompt": [7, 2, 3]}, {**good, "prompt": [4, 5]}]
        return await asyncio.gather(*[c.post(f"{url}/v1/completions", json=b) for b in bodies])


def _ead(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ead_sdk.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_ead_serve_refuses_to_start_when_the_spec_needs_a_signal_the_upstreams_lack(tmp_path, tokenizer):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"policy": "rolling_entropy", "params": {"threshold": 1.0}}))  # exact entropy
    tok = tmp_path / "tok"
    tokenizer.save_pretrained(tok)
    with FakeOpenAI(ToyLM(VOCAB, seed=1)) as small, FakeOpenAI(ToyLM(VOCAB, seed=2)) as large:
        proc = _ead(
            "serve",
            "--spec",
            str(spec),
            "--small",
            small.base_url,
            "--large",
            large.base_url,
            "--tokenizer",
            str(tok),
            "--num-params",
            "100",
            "--num-params",
            "1000",
            "--port",
            str(free_port()),
        )
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "ead serve: error:" in out and "exact entropy" in out and "top-20" in out


def test_ead_serve_end_to_end_with_the_openai_client_then_sigterm(tmp_path, tokenizer):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TOPK_SPEC))
    tok = tmp_path / "tok"
    tokenizer.save_pretrained(tok)
    port = free_port()
    with FakeOpenAI(ToyLM(VOCAB, seed=1)) as small, FakeOpenAI(ToyLM(VOCAB, seed=2)) as large:
        proc = _ead(
            "serve",
            "--spec",
            str(spec),
            "--small",
            small.base_url,
            "--large",
            large.base_url.removesuffix("/v1"),
            "--tokenizer",
            str(tok),
            "--num-params",
            "100",
            "--num-params",
            "1000",
            "--port",
            str(port),
            "--record",
            str(tmp_path / "rec"),
        )
        try:
            _wait_up(port, proc)
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            whole = c.completions.create(model="ead-router", prompt="t3 t4 t5", max_tokens=16, temperature=0)
            ext = whole.model_extra["ead"]["choices"][0]
            streamed = c.completions.create(
                model="ead-router", prompt="t3 t4 t5", max_tokens=16, temperature=0, stream=True
            )
            text = "".join(ch.choices[0].text for ch in streamed)
            chat = c.chat.completions.create(
                model="ead-router", messages=[{"role": "user", "content": "t9"}], max_tokens=5
            )
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert set(ext["routes"]) == {0, 1}  # the top-8 estimate switched models
    assert text == whole.choices[0].text
    assert text.split() == tokenizer.decode(ext["token_ids"], skip_special_tokens=True).split()
    assert chat.usage.completion_tokens >= 1
    assert "ead_tokens_total" in metrics and 'outcome="completed"} 2.0' in metrics
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["large", "small"]


def _wait_up(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("ead serve did not come up")
