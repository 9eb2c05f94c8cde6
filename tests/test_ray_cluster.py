"""``--engine ray --address`` against a real ``ray start --head`` with token authentication, on localhost.

docs/scale-out.md tells a user to start a head node with ``ray start --head`` and to pass its
address. Recent Ray versions start that head with token authentication whenever a token exists,
and a client that joins by address must present the token. This test starts such a head (its
own port, temporary directory and token, one CPU), joins it the way the page says, and stops it
by signalling its own process group (never ``ray stop``, which ends every Ray process of the user).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ead_sdk.testing.vllm_server import free_port

pytest.importorskip("ray.data", reason="the 'ray' extra is not installed (pip install 'ead-sdk[ray]')")

EAD = [sys.executable, "-m", "ead_sdk.cli"]
GRID = ["--policy", "rolling_entropy", "--grid", "window=1,2", "--grid", "threshold=1,2.5", "--json"]
START_S = 90  # the head must answer within this; a loaded 2-core machine needs ~20 s


def _client_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head node started by ``ray start --head --block`` with token authentication; stopped afterwards."""
    token = secrets.token_hex(32)
    home = tmp_path_factory.mktemp("head-home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(token)
    temp_dir = tempfile.mkdtemp(prefix="ead-ray-")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}"]
    cmd += ["--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--num-cpus=1", "--include-dashboard=false"]
    log = open(home / "ray-start.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [*cmd, "--block"], env=_client_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in (home / "ray-start.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start --head did not start:\n" + (home / "ray-start.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "token": token}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops the processes it started
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_joins_a_token_cluster_by_address_and_gives_the_local_figures(head, tmp_path):
    """With the token where Ray keeps it (~/.ray/auth_token) and RAY_AUTH_MODE unset, the sweep runs."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(head["token"])
    bad_home = tmp_path / "no-token"
    bad_home.mkdir()
    env = _client_env(home)
    # Both clients run at once: the refused one spends Ray's connection retries (about 20 s).
    ok = subprocess.Popen(
        [*EAD, "sweep", *GRID, "--engine", "ray", "--address", head["address"], "--batch-rows", "64"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    refused = subprocess.Popen(
        [*EAD, "sweep", *GRID, "--engine", "ray", "--address", head["address"]],
        env=_client_env(bad_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == 0, err[-3000:]
    local = subprocess.run([*EAD, "sweep", *GRID], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out)["rows"] == json.loads(local.stdout)["rows"]

    out, err = refused.communicate(timeout=300)
    assert refused.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("ead sweep: error: the Ray cluster at"), err[-3000:]
    assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN" in last and "Traceback" not in err
