"""``ead replay/sweep/calibrate --signal``: the signal shown, chosen, recorded in the spec, refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ead_sdk import SignalSpec, load_policy
from ead_sdk.cli.signal_option import parse_signal
from ead_sdk.errors import UserError
from ead_sdk.simulators import calibrate, replay, synthetic_traces
from ead_sdk.traces import read_traces, write_traces
from tests.test_cli import ead, ok_json

SPEC = {"policy": "rolling_entropy", "params": {"window": 2, "threshold": 1.0, "unit": "nats"}}


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_traces(synthetic_traces(16, (5, 30), k=4, seed=6), tmp_path_factory.mktemp("t") / "syn.parquet")


def test_parse_signal():
    assert parse_signal("entropy") == SignalSpec() == parse_signal(" Exact ")
    assert parse_signal("topk:20") == SignalSpec.topk(20) == parse_signal("top-k:20")
    for bad in ("topk", "topk:0", "topk:x", "varentropy"):
        with pytest.raises(UserError, match="expected entropy or topk:K"):
            parse_signal(bad)


def test_replay_shows_and_chooses_the_signal(trace_path: Path):
    spec = json.dumps(SPEC)
    plain = ead("replay", trace_path, "-p", spec)
    assert plain.exit_code == 0, plain.output
    assert "signal: exact entropy" in plain.stdout
    chosen = ead("replay", trace_path, "-p", spec, "--signal", "topk:3")
    assert "signal: top-3 entropy estimate" in chosen.stdout
    data = ok_json(ead("replay", trace_path, "-p", spec, "--signal", "topk:3", "--json"))
    assert data["signal"] == data["policy"]["signal"] == {"kind": "topk_entropy", "k": 3}
    direct = replay(read_traces(trace_path), load_policy({**SPEC, "signal": {"kind": "topk_entropy", "k": 3}}))
    assert data["summary"]["large_share"] == pytest.approx(direct.summary()["large_share"])
    from_spec = ok_json(
        ead("replay", trace_path, "-p", json.dumps({**SPEC, "signal": {"kind": "topk_entropy", "k": 2}}), "--json")
    )
    assert from_spec["signal"] == {"kind": "topk_entropy", "k": 2}


def test_sweep_and_calibrate_take_the_signal(trace_path: Path, tmp_path: Path):
    spec = json.dumps(SPEC)
    table = ead("sweep", trace_path, "-p", spec, "-g", "threshold=0.5,1.5", "--signal", "topk:2")
    assert table.exit_code == 0, table.output
    assert "sweep of rolling_entropy (next, top-2 entropy estimate)" in table.stdout
    data = ok_json(ead("sweep", trace_path, "-p", spec, "-g", "threshold=0.5,1.5", "--signal", "topk:2", "--json"))
    assert data["signal"] == {"kind": "topk_entropy", "k": 2}
    out = tmp_path / "calibrated.json"
    args = ("calibrate", trace_path, "-p", spec, "--param", "threshold", "--target-large-share", "0.3", "--signal")
    text = ead(*args, "topk:4", "--out", out)
    assert text.exit_code == 0, text.output
    assert "rolling_entropy: threshold =" in text.stdout and "signal: top-4 entropy estimate" in text.stdout
    written = json.loads(out.read_text())
    assert written["signal"] == {"kind": "topk_entropy", "k": 4}
    direct = calibrate(read_traces(trace_path), load_policy(written), "threshold", target_large_share=0.3)
    assert direct.value == pytest.approx(written["params"]["threshold"])
    figures = ok_json(ead(*args, "topk:4", "--json"))
    assert figures["signal"] == figures["spec"]["signal"] == {"kind": "topk_entropy", "k": 4}


@pytest.mark.parametrize("command", ["replay", "sweep", "calibrate"])
def test_a_k_above_the_trace_is_a_one_line_error(trace_path: Path, command: str):
    extra = {
        "replay": (),
        "sweep": ("-g", "threshold=0.5,1.5"),
        "calibrate": ("--param", "threshold", "--target-large-share", "0.3"),
    }
    result = ead(command, trace_path, "-p", json.dumps(SPEC), *extra[command], "--signal", "topk:9")
    assert result.exit_code != 0
    assert "recorded top-4 log-probabilities" in result.output and "Traceback" not in result.output
    bad = ead(command, trace_path, "-p", json.dumps(SPEC), *extra[command], "--signal", "top9")
    assert bad.exit_code != 0 and "expected entropy or topk:K" in bad.output
