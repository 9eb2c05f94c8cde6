"""ead serve as a process: SIGTERM drains the requests in flight, then it exits; it listens on loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

pytest.importorskip("uvicorn")

from serve_harness import wait_for  # noqa: E402

HARNESS = Path(__file__).with_name("serve_harness.py")
ROOT = HARNESS.parents[1]


@pytest.fixture
def toy_server(tmp_path):
    """A toy-engine server process (10 ms a token, 20 s drain), its port; killed if a test leaves it running."""
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HARNESS.parent)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS), "0.01", "20", str(port_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text() or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stdout.read()
        yield proc, int(port_file.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _stream(url: str, out: dict) -> None:
    body = {"prompt": "abc", "max_tokens": 300, "temperature": 0, "stream": True}
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out["frames"].append(line)
    except Exception as exc:  # reported by the test
        out["error"] = exc


def test_sigterm_drains_requests_in_flight_then_exits(toy_server):
    proc, port = toy_server
    url = f"http://127.0.0.1:{port}"
    out: dict = {"frames": []}
    client = threading.Thread(target=_stream, args=(url, out))
    client.start()
    wait_for(lambda: len(out["frames"]) >= 5 or "error" in out, 30)  # the stream is under way
    assert httpx.get(f"{url}/health").json()["lanes_in_flight"] == 1, out
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _refused(url), 10)  # no new connections once draining
    client.join(30)
    assert proc.wait(30) == 0
    assert "error" not in out, out["error"]
    frames = out["frames"]
    assert out["status"] == 200 and frames[-1] == "data: [DONE]"
    last = json.loads(frames[-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] == "length"
    assert len(last["ead"]["token_ids"]) == 300 == len(frames) - 2  # every token arrived, then the last chunk


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
    except httpx.TransportError:
        return True
    return False


def _listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on, IPv4 and IPv6 (from /proc: Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addr, port = fields[1].split(":")
                found.append((_address(addr), int(port, 16)))
    return found


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    return ":".join(raw[i : i + 4][::-1].hex() for i in range(0, 16, 4))  # tcp6: four little-endian words


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_it_listens_on_the_given_host_only(toy_server):
    proc, port = toy_server
    assert _listening(proc.pid) == [("127.0.0.1", port)]
