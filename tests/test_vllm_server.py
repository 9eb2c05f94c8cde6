"""`VLLMServer` and the session's vLLM fixtures.

The process handling (readiness, a clear failure with the log's tail, stopping the whole process
group) is checked on stand-in commands in a second; the real servers are checked against
transformers on the same weights: greedy tokens equal, through the OpenAI completions API.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import urllib.request

import pytest

from ead_sdk import EngineStartError
from ead_sdk.testing.vllm_server import VLLMServer, VLLMServerOptions


class StandIn(VLLMServer):
    """A VLLMServer whose process is a short Python script instead of vLLM."""

    def __init__(self, script: str, tmp_path, **kwargs):
        super().__init__(tmp_path / "model", log_path=tmp_path / "server.log", **kwargs)
        self.script = textwrap.dedent(script)

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port)]


HEALTHY = """
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("child", child.pid, flush=True)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
        return stat.read().split(") ")[1][0] != "Z"


def test_a_ready_server_is_stopped_with_its_whole_process_group(tmp_path):
    with StandIn(HEALTHY, tmp_path) as server:
        assert server.ready_after_s is not None and server.ready_after_s < 30
        pid = server.process.pid
        deadline = time.monotonic() + 10
        while "child" not in server.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(server.log_tail().split()[1])
        assert _alive(pid) and _alive(child)
    deadline = time.monotonic() + 10
    while (_alive(pid) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid) and not _alive(child)
    server.stop()  # idempotent


def test_a_server_that_exits_fails_with_its_log_tail(tmp_path):
    server = StandIn("import sys; print('model folder has no config.json', flush=True); sys.exit(3)", tmp_path)
    with pytest.raises(EngineStartError, match=r"(?s)exited with code 3 before it was ready.*no config\.json"):
        server.wait_ready(30)


def test_a_server_never_ready_is_stopped_after_the_timeout(tmp_path):
    server = StandIn("import time; print('loading...', flush=True); time.sleep(600)", tmp_path).start()
    pid = server.process.pid
    with pytest.raises(EngineStartError, match=r"(?s)was not ready after 1 s \(stopped\).*loading"):
        server.wait_ready(1)
    assert server.process is None
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_the_command_is_vllm_serve_with_the_cpu_builds_settings(tmp_path):
    server = VLLMServer(tmp_path, name="m", options=VLLMServerOptions(cpu_cores=(1,), max_logprobs=20))
    command = server.command()
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == str(tmp_path)
    assert "--enable-prefix-caching" in command and command[command.index("--max-logprobs") + 1] == "20"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    env = server.environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


def _complete(server, prompt: list[int], n: int) -> dict:
    body = {
        "model": server.name,
        "prompt": prompt,
        "max_tokens": n,
        "temperature": 0,
        "logprobs": 20,
        "return_tokens_as_token_ids": True,
    }
    request = urllib.request.Request(
        f"{server.base_url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())["choices"][0]


@pytest.mark.parametrize("which", ["large", "small"])
def test_the_servers_give_transformers_greedy_tokens_with_top_20_by_id(which, request):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    server = request.getfixturevalue(f"vllm_server_{which}")
    folder = request.getfixturevalue(f"smollm2_{which}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is")["input_ids"]
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=2)
    choice = _complete(server, prompt, 8)
    tokens = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
    assert tokens == expected[0, len(prompt) :].tolist()
    assert all(len(top) >= 20 for top in choice["logprobs"]["top_logprobs"])
