"""The ``ead`` command line: help, JSON output equal to the SDK called directly, plots, one-line user errors."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ead_sdk.cli import app
from ead_sdk.cli.offline import parse_grid
from ead_sdk.errors import UserError
from ead_sdk.interface import ESCALATIONS
from ead_sdk.registry import default_registry
from ead_sdk.simulators import calibrate, replay, sweep, synthetic_traces
from ead_sdk.specs import load_policy
from ead_sdk.traces import read_traces, validate_table, write_traces

COMMANDS = ("policies", "replay", "sweep", "calibrate", "record", "generate", "eval", "demo", "view")
BUILT_IN = {"rolling_entropy", "fixed", "hysteresis", "top_h", "cost_budget", "random", "confidence", "oracle"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RE_SPEC = {
    "policy": "rolling_entropy",
    "params": {"window": 3, "threshold": 1.2, "unit": "nats"},
    "escalation": "retry",
}


def ead(*args: Any) -> Any:
    """Run ``ead ARGS`` in this process (stdout and stderr kept apart; wide enough that tables do not wrap)."""
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="ead", env={"COLUMNS": "200"})


def ok_json(result: Any) -> Any:
    """The JSON a successful ``--json`` run printed on stdout."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def jsonable(x: Any) -> Any:
    """``x`` as ``--json`` prints it: NaN and infinities as null, tuples as lists, numpy scalars as Python's."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def assert_user_error(result: Any, command: str, *needles: str) -> None:
    """Exit status 1, exactly one line on stderr naming the command, no traceback anywhere."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ead {command}: error: "), lines[0]
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small labelled synthetic trace with top-k, written as Parquet."""
    return write_traces(synthetic_traces(24, (5, 40), k=4, seed=3), tmp_path_factory.mktemp("t") / "syn.parquet")


@pytest.fixture(scope="module")
def demo_trace() -> Path:
    from ead_sdk.demo.record_traces import default_traces_path

    return default_traces_path()


# ------------------------------------------------------------------------------ help and policies


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    """``ead CMD --help`` exits 0 and documents the command's usage (and ``--json`` where it reports figures)."""
    result = ead(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: ead {command}" in result.stdout
    assert "--json" in result.stdout  # every command that reports figures has it (docs/quickstart.md says so)
    assert "--help" in result.stdout


def test_sweep_help_names_every_escalation_mode() -> None:
    text = " ".join(ead("sweep", "--help").stdout.split())
    for mode in ESCALATIONS:
        assert mode in text, mode


def test_root_help_lists_every_command() -> None:
    result = ead("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    bare = ead()  # no_args_is_help: the same help, not an error trace
    assert "Usage: ead" in bare.output and "Traceback" not in bare.output


def test_policies_json_lists_the_built_ins_with_their_schemas() -> None:
    """Every built-in policy comes from distribution ``ead-sdk``; its parameter schema matches its default spec."""
    data = ok_json(ead("policies", "--json"))
    by_name = {p["name"]: p for p in data["policies"]}
    assert BUILT_IN <= set(by_name)
    assert data["problems"] == [str(p) for p in default_registry().problems]
    for name in BUILT_IN:
        info = by_name[name]
        assert info["distribution"] == "ead-sdk"
        assert info["class"].startswith(f"ead_sdk.policies.{name}.")
        assert info == jsonable(default_registry().policies[name].as_dict())
        defaults = load_policy(name).spec().get("params", {})
        assert set(info["parameters"]) == set(defaults)
        for pname, schema in info["parameters"].items():
            assert {"kind", "doc", "per_lane"} <= set(schema), (name, pname)
            assert schema["default"] == jsonable(defaults[pname]), (name, pname)
    threshold = by_name["rolling_entropy"]["parameters"]["threshold"]
    assert threshold["kind"] == "float" and threshold["low"] == 0.0 and threshold["per_lane"] is True


def test_policies_table_names_every_policy() -> None:
    result = ead("policies")
    assert result.exit_code == 0
    for name in BUILT_IN:
        assert name in result.stdout
    assert "ead-sdk" in result.stdout


def test_python_dash_m_runs_the_cli_and_offline_commands_need_no_torch(demo_trace: Path) -> None:
    """``python -m ead_sdk.cli`` is the ``ead`` command; ``ead replay`` runs with torch/transformers unimportable."""
    out = subprocess.run(
        [sys.executable, "-m", "ead_sdk.cli", "policies", "--json"], capture_output=True, text=True, check=True
    )
    assert BUILT_IN <= {p["name"] for p in json.loads(out.stdout)["policies"]}
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['ead', 'replay', '--policy', 'fixed', '--json']\n"
        "from ead_sdk.cli import main\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["summary"]["sequences"] == len(read_traces(demo_trace))


# ------------------------------------------------------------------------------ replay


def test_replay_defaults_to_the_shipped_trace(demo_trace: Path) -> None:
    """Without TRACES, ``ead replay`` replays the embedded demo trace: figures equal `simulators.replay`."""
    data = ok_json(ead("replay", "--policy", "rolling_entropy", "--json"))
    assert Path(data["traces"]) == demo_trace
    direct = replay(read_traces(demo_trace), load_policy("rolling_entropy"))
    assert data["summary"] == jsonable(direct.summary())
    assert data["report"] == jsonable(direct.report().as_dict())
    assert data["policy"] == jsonable(load_policy("rolling_entropy").spec())
    assert data["summary"]["sequences"] == 192


def test_replay_of_a_synthetic_trace_equals_the_simulator(trace_path: Path) -> None:
    data = ok_json(ead("replay", trace_path, "--policy", json.dumps(RE_SPEC), "--json"))
    policy = load_policy(RE_SPEC)
    direct = replay(read_traces(trace_path), policy)
    assert data["policy"] == jsonable(policy.spec()) and data["policy"]["escalation"] == "retry"
    assert data["summary"] == jsonable(direct.summary())
    assert data["report"] == jsonable(direct.report().as_dict())
    assert data["summary"]["wasted"] > 0  # retry escalation pays wasted forwards: the spec's mode was honoured


def test_replay_reads_a_spec_file_and_prints_a_table(trace_path: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(RE_SPEC))
    from_file = ok_json(ead("replay", trace_path, "--policy", spec, "--json"))
    assert from_file == ok_json(ead("replay", trace_path, "--policy", json.dumps(RE_SPEC), "--json"))
    text = ead("replay", trace_path, "--policy", spec)
    assert text.exit_code == 0
    share = replay(read_traces(trace_path), load_policy(RE_SPEC)).summary()["large_share"]
    assert "large_share" in text.stdout and f"{share:.4f}" in text.stdout


@settings(max_examples=8)
@given(threshold=st.floats(0.0, 4.0), window=st.integers(1, 6), escalation=st.sampled_from(ESCALATIONS))
def test_replay_json_equals_the_simulator_for_any_configuration(
    trace_path: Path, threshold: float, window: int, escalation: str
) -> None:
    """For any rolling_entropy configuration, ``ead replay --json`` reports exactly `simulators.replay`'s summary."""
    spec = {"policy": "rolling_entropy", "params": {"threshold": threshold, "window": window}, "escalation": escalation}
    data = ok_json(ead("replay", trace_path, "--policy", json.dumps(spec), "--json"))
    assert data["summary"] == jsonable(replay(read_traces(trace_path), load_policy(spec)).summary())


# ------------------------------------------------------------------------------ sweep


def test_sweep_json_rows_equal_the_simulator_and_the_plot_is_a_png(trace_path: Path, tmp_path: Path) -> None:
    plot = tmp_path / "plots" / "frontier.png"
    data = ok_json(
        ead(
            "sweep",
            trace_path,
            "-p",
            "rolling_entropy",
            "--grid",
            "threshold=0.5:2.5:5",
            "--grid",
            "window=1,4",
            "--plot",
            plot,
            "--json",
        )
    )
    grid = {"threshold": [float(v) for v in np.linspace(0.5, 2.5, 5)], "window": [1, 4]}
    direct = sweep(read_traces(trace_path), "rolling_entropy", grid, quality="quality")
    assert data["quality"] == "quality"  # the synthetic trace is labelled
    assert data["escalation"] == "next" and data["plot"] == str(plot)
    rows = data["rows"]
    assert len(rows) == 10
    assert [{k: v for k, v in r.items() if k != "frontier"} for r in rows] == jsonable(direct.table.to_pylist())
    front = [{k: v for k, v in r.items() if k.startswith("param.")} for r in direct.frontier.to_pylist()]
    assert [r for r in rows if r["frontier"]] == [
        r for r in rows if {k: v for k, v in r.items() if k.startswith("param.")} in front
    ]
    assert any(r["frontier"] for r in rows)
    assert png_size(plot) == (770, 550)  # 7 x 5 inches at 110 dpi
    assert plot.stat().st_size > 10_000


def test_sweep_table_and_quality_choice(trace_path: Path) -> None:
    result = ead(
        "sweep",
        trace_path,
        "-p",
        "rolling_entropy",
        "-g",
        "threshold=0.5,1.5",
        "--quality",
        "agreement",
        "--escalation",
        "retry",
    )
    assert result.exit_code == 0, result.output
    assert "sweep of rolling_entropy (retry, exact entropy)" in result.stdout and "agreement" in result.stdout
    assert sum(line.startswith("│") for line in result.stdout.splitlines()) == 2  # one table row per configuration
    data = ok_json(
        ead(
            "sweep",
            trace_path,
            "-p",
            "rolling_entropy",
            "-g",
            "threshold=0.5,1.5",
            "--quality",
            "agreement",
            "--escalation",
            "retry",
            "--json",
        )
    )
    direct = sweep(
        read_traces(trace_path),
        {"policy": "rolling_entropy", "escalation": "retry"},
        {"threshold": [0.5, 1.5]},
        quality="agreement",
    )
    assert [{k: v for k, v in r.items() if k != "frontier"} for r in data["rows"]] == jsonable(direct.table.to_pylist())


def test_sweep_takes_a_json_spec_as_the_policy(demo_trace: Path) -> None:
    spec = {"policy": "rolling_entropy", "params": {"window": 3, "unit": "nats"}, "escalation": "retry_token"}
    data = ok_json(ead("sweep", "-p", json.dumps(spec), "-g", "threshold=1,2", "--json"))
    assert data["policy"] == "rolling_entropy" and data["escalation"] == "retry_token"
    direct = sweep(read_traces(demo_trace), spec, {"threshold": [1, 2]}, quality="quality")
    assert [r["large_share"] for r in data["rows"]] == direct.table.column("large_share").to_pylist()


def test_sweep_defaults_to_the_shipped_trace(demo_trace: Path) -> None:
    data = ok_json(ead("sweep", "-p", "rolling_entropy", "-g", "threshold=1,2", "--json"))
    assert Path(data["traces"]) == demo_trace and data["quality"] == "quality"
    direct = sweep(read_traces(demo_trace), "rolling_entropy", {"threshold": [1, 2]}, quality="quality")
    assert [r["large_share"] for r in data["rows"]] == direct.table.column("large_share").to_pylist()


@settings(max_examples=40)
@given(values=st.lists(st.integers(-1000, 1000) | st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=6))
def test_parse_grid_reads_value_lists(values: list[float]) -> None:
    """``NAME=V1,V2,...`` parses back to the same numbers, in order."""
    grid = parse_grid(["x=" + ",".join(repr(v) for v in values)])
    assert grid == {"x": values}
    assert [type(v) for v in grid["x"]] == [type(v) for v in values]


@settings(max_examples=40)
@given(lo=st.floats(-10, 10), hi=st.floats(-10, 10), count=st.integers(1, 50))
def test_parse_grid_reads_ranges_as_linspace(lo: float, hi: float, count: int) -> None:
    """``NAME=A:B:N`` is exactly ``numpy.linspace(A, B, N)``."""
    assert parse_grid([f"t={lo!r}:{hi!r}:{count}"]) == {"t": [float(v) for v in np.linspace(lo, hi, count)]}


@settings(max_examples=150)
@given(item=st.text(alphabet="ab=:,.0123-e ", max_size=12))
def test_parse_grid_either_parses_or_refuses_with_a_user_error(item: str) -> None:
    """Any ``--grid`` string gives a non-empty list of values per name, or a `UserError` naming it — nothing else."""
    try:
        grid = parse_grid([item])
    except UserError as exc:
        assert repr(item) in str(exc) or "--grid" in str(exc)
        return
    assert grid and all(isinstance(v, list) and v for v in grid.values())


# ------------------------------------------------------------------------------ calibrate


def test_calibrate_equals_the_simulator_and_its_spec_round_trips(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "spec.json"
    start = json.dumps({"policy": "rolling_entropy", "params": {"window": 2, "unit": "nats"}})
    data = ok_json(
        ead(
            "calibrate",
            trace_path,
            "--policy",
            start,
            "--param",
            "threshold",
            "--target-large-share",
            "0.3",
            "--out",
            out,
            "--json",
        )
    )
    direct = calibrate(read_traces(trace_path), load_policy(start), "threshold", target_large_share=0.3)
    assert data["parameter"] == "threshold" and data["metric"] == "large_share" and data["target"] == 0.3
    assert data["value"] == direct.value
    assert data["calibration"] == jsonable(direct.calibration) and data["held_out"] == jsonable(direct.held_out)
    assert data["sequences"] == list(direct.sequences) and data["evaluations"] == direct.evaluations
    assert data["spec"] == jsonable(direct.policy.spec()) and data["out"] == str(out)
    loaded = load_policy(out)
    assert loaded.spec() == direct.policy.spec()
    assert loaded.spec()["params"]["threshold"] == data["value"] and loaded.spec()["params"]["window"] == 2


def test_calibrate_to_a_cost_ratio_on_the_shipped_trace(demo_trace: Path) -> None:
    args = ["calibrate", "--policy", "hysteresis", "--param", "upper", "--target-cost-ratio", "0.5"]
    args += ["--low", "1.0", "--high", "8.0"]
    data = ok_json(ead(*args, "--held-out", "0.25", "--json"))
    direct = calibrate(
        read_traces(demo_trace),
        load_policy("hysteresis"),
        "upper",
        target_cost_ratio=0.5,
        held_out=0.25,
        bounds=(1.0, 8.0),
    )
    assert data["metric"] == "cost_ratio" and data["value"] == direct.value
    assert data["sequences"] == list(direct.sequences) and sum(data["sequences"]) == 192
    text = ead(*args)
    assert text.exit_code == 0 and "hysteresis: upper = " in text.stdout


# ------------------------------------------------------------------------------ live: generate, record, eval, demo


@pytest.fixture(scope="module")
def pair() -> list[str]:
    """The demo pair's model directories, as ``--models`` arguments."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ead_sdk.demo import model_dirs

    return [str(p) for p in model_dirs()]


PROMPT = "import os\n\n\ndef join(a, b):\n    return os.path."


def test_generate_json_equals_the_sdk_decoder(pair: list[str]) -> None:
    """``ead generate --json``: the tokens, models and report of `ead_sdk.generate` with the same backend and policy."""
    import ead_sdk
    from ead_sdk.demo.live_eval import load_backend

    spec = json.dumps({"policy": "rolling_entropy", "params": {"window": 1, "threshold": 1.5}})
    data = ok_json(ead("generate", "--models", *pair, "--policy", spec, "--max-new-tokens", 10, "--json", PROMPT))
    lane = ead_sdk.generate(load_backend(pair), load_policy(spec), [PROMPT], max_new_tokens=10, logprobs=8)[0]
    assert data["prompt"] == PROMPT and data["text"] == lane.text
    assert data["tokens"] == list(lane.tokens) and data["models"] == list(lane.models)
    assert data["finish_reason"] == lane.finish_reason and data["report"] == jsonable(lane.report.as_dict())
    assert data["policy"] == jsonable(load_policy(spec).spec())
    assert len(data["tokens"]) == 10 and set(data["models"]) <= {0, 1}


def test_generate_prints_the_text_then_the_cost_report(pair: list[str]) -> None:
    result = ead("generate", "--models", *pair, "--max-new-tokens", 6, "--policy", "fixed", "--stop", "\\n", PROMPT)
    assert result.exit_code == 0, result.output
    assert "return os.path." in result.stdout
    assert "models: small  large" in result.stdout and "policy: fixed" in result.stdout
    assert "large share 0.000" in result.stdout and "cost ratio" in result.stdout
    assert "large model: 0 decode steps for 6 tokens (large alone: 6, 100% fewer)" in result.stdout


def test_generate_reports_the_large_models_decode_steps(pair: list[str]) -> None:
    """The steps line is the report's own figures: large forwards minus its catch-up tokens."""
    spec = json.dumps({"policy": "rolling_entropy", "params": {"window": 1, "threshold": 1.0}})
    data = ok_json(ead("generate", "--models", *pair, "--policy", spec, "--max-new-tokens", 24, "--json", PROMPT))
    rep = data["report"]
    steps = rep["forwards"][1] - rep["catchup"][1]
    assert steps == rep["emitted"][1] + rep["wasted"][1]  # every large step emitted a token or was a wasted retry
    text = ead("generate", "--models", *pair, "--policy", spec, "--max-new-tokens", 24, PROMPT).stdout
    assert f"large model: {steps} decode steps for {rep['tokens']} tokens" in " ".join(text.split())
    assert f"plus {rep['catchup'][1]} tokens read in catch-up passes" in " ".join(text.split())


def test_record_writes_a_trace_that_validates_and_replays(pair: list[str], tmp_path: Path) -> None:
    """Three prompts in two batches: ids 0-2 in prompt order, the pair's metadata, then ``ead replay`` reads it."""
    from ead_sdk.demo import task
    from ead_sdk.demo.live_eval import load_backend

    prompts = ["def f(x):\n    return x", {"prompt": "class A:\n    def __init__(self):\n        self."}, "import "]
    pfile = tmp_path / "prompts.jsonl"
    pfile.write_text("\n".join(json.dumps(p) for p in prompts) + "\n\n")
    out = tmp_path / "rec.parquet"
    result = ead(
        "record", "--models", *pair, "--prompts", pfile, "--out", out, "--max-new-tokens", 6, "--batch", 2, "--k", 4
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 3 sequences, {read_traces(out).num_tokens} tokens" in result.stdout
    traces = read_traces(out)
    validate_table(traces.meta, traces.table, str(out))
    backend = load_backend(pair)
    assert traces.meta.model_names == ("small", "large") and traces.meta.k == 4
    assert traces.meta.param_counts == tuple(backend.param_counts)
    assert traces.meta.tokenizer_fingerprint == backend.tokenizer_fingerprint
    texts = [p if isinstance(p, str) else p["prompt"] for p in prompts]
    assert [s.fields["sequence_id"] for s in traces] == [0, 1, 2]
    assert [s.prompt_ids.tolist() for s in traces] == [task.encode(t) for t in texts]
    assert all(s.length == 6 and not s.emitted_by.any() for s in traces)  # the default policy: fixed, small
    data = ok_json(ead("replay", out, "--policy", "rolling_entropy", "--json"))
    assert data["summary"]["sequences"] == 3 and data["summary"]["tokens"] == 18
    again = ead("record", "--models", *pair, "--prompts", pfile, "--out", out)
    assert_user_error(again, "record", "already exists", "--overwrite")
    data = ok_json(ead("record", "--prompts", pfile, "--out", out, "--max-new-tokens", 4, "--overwrite", "--json"))
    traces = read_traces(out)
    assert data == {
        "out": str(out),
        "prompts": 3,
        "sequences": 3,
        "tokens": traces.num_tokens,
        "models": ["small", "large"],
        "param_counts": list(traces.meta.param_counts),
        "k": 8,
        "policy": jsonable(load_policy("fixed").spec()),
        "problems": [],
        "interrupted": None,
    }


def eval_rows_are_consistent(rows: list[dict[str, Any]]) -> None:
    """Quality in [0, 1]; share of large = q / q_large; gap recovered = (q - q_small) / (q_large - q_small)."""
    small, large = rows[0], rows[1]
    assert (small["label"], large["label"]) == ("small only", "large only")
    assert small["large_share"] == 0.0 and large["large_share"] == 1.0
    for r in rows:
        assert 0.0 <= r["large_share"] <= 1.0 and r["cost_ratio"] > 0
        for m in ("exact", "soft", "similarity"):
            q, qs, ql = r["quality"][m], small["quality"][m], large["quality"][m]
            assert 0.0 <= q <= 1.0
            if ql != qs:
                assert r["gap_recovered"][m] == pytest.approx((q - qs) / (ql - qs), rel=1e-12, abs=1e-12)
            else:
                assert r["gap_recovered"][m] is None
            if ql:
                assert r["share_of_large"][m] == pytest.approx(q / ql, rel=1e-12)
            else:
                assert r["share_of_large"][m] is None
    for m in ("soft", "similarity"):
        assert small["gap_recovered"][m] == 0.0 and large["gap_recovered"][m] == 1.0


@pytest.fixture(scope="module")
def eval_run(pair: list[str]) -> dict[str, Any]:
    hyst = json.dumps({"policy": "hysteresis", "params": {"upper": 2.0, "lower": 1.0}, "escalation": "retry"})
    return ok_json(
        ead("eval", "--models", *pair, "-p", "rolling_entropy", "-p", hyst, "-n", 4, "--max-new-tokens", 8, "--json")
    )


def test_eval_reports_baselines_and_policies_with_consistent_gap_measures(eval_run: dict[str, Any]) -> None:
    assert eval_run["prompts"] == 4 and eval_run["max_new_tokens"] == 8
    rows = eval_run["rows"]
    assert [r["label"] for r in rows] == ["small only", "large only", "rolling_entropy", "hysteresis"]
    assert rows[3]["escalation"] == "retry" and rows[2]["escalation"] == "next"
    eval_rows_are_consistent(rows)
    assert rows[0]["quality"]["soft"] < rows[1]["quality"]["soft"]  # the pair has a real gap here too


def test_eval_figures_equal_the_live_evaluation(pair: list[str], eval_run: dict[str, Any]) -> None:
    from ead_sdk.demo import task
    from ead_sdk.demo.live_eval import evaluate_live, load_backend

    score = evaluate_live(
        load_backend(pair), load_policy("rolling_entropy"), task.load_eval_prompts(4), batch=2, max_new_tokens=8
    )
    row = eval_run["rows"][2]
    assert row["quality"] == jsonable(score.quality)
    assert row["large_share"] == score.report.large_share and row["cost_ratio"] == score.report.cost_ratio


def test_eval_prints_a_table(pair: list[str]) -> None:
    result = ead("eval", "--models", *pair, "-p", "confidence", "-n", 2, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    assert "live evaluation on 2 held-out demo prompts" in result.stdout
    for label in ("small only", "large only", "confidence"):
        assert label in result.stdout


@pytest.mark.parametrize("command", ["generate", "record", "eval"])
def test_live_commands_default_to_the_demo_pair(command: str, pair: list[str], tmp_path: Path) -> None:
    """Without ``--models`` the live commands run the embedded demo pair: the same output as naming it."""
    pfile = tmp_path / "p.txt"
    pfile.write_text("import os\n")
    args = {
        "generate": ["generate", "--max-new-tokens", 3, "--json", "x = "],
        "record": ["record", "--prompts", pfile, "--max-new-tokens", 3, "--out"],
        "eval": ["eval", "-p", "fixed", "-n", 1, "--max-new-tokens", 3, "--json"],
    }[command]
    if command == "record":
        default, named = ead(*args, tmp_path / "a.parquet"), ead(*args, tmp_path / "b.parquet", "--models", *pair)
        assert default.exit_code == 0 and named.exit_code == 0, default.output
        a, b = read_traces(tmp_path / "a.parquet"), read_traces(tmp_path / "b.parquet")
        assert a.meta == b.meta and a.table.equals(b.table)
        return
    default, named = ok_json(ead(*args)), ok_json(ead(*args, "--models", *pair))
    if command == "eval":
        for row in default["rows"] + named["rows"]:
            row.pop("seconds", None)
    assert default == named


@pytest.fixture(scope="module")
def demo_run(pair: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    return ok_json(ead("demo", "-n", 4, "--max-new-tokens", 8, "--out", out, "--json")), out


def test_demo_writes_the_figures_and_the_frontier_plot(demo_run: tuple[dict[str, Any], Path]) -> None:
    figures, out = demo_run
    labels = [r["label"] for r in figures["rows"]]
    assert labels[:2] == ["small only", "large only"]
    assert {"random", "confidence", "rolling_entropy", "hysteresis", "top_h", "cost_budget"} <= set(labels)
    assert figures["prompts"] == 4 and figures["max_new_tokens"] == 8 and figures["models"] == ["small", "large"]
    eval_rows_are_consistent(figures["rows"])
    for r in figures["rows"][2:]:
        assert r["traces_large_share"] is not None and 0.0 <= r["traces_large_share"] <= 1.0
    assert figures["plot"] == str(out / "frontier.png")
    width, height = png_size(out / "frontier.png")
    assert width > 1000 and height > 400 and (out / "frontier.png").stat().st_size > 20_000
    written = json.loads((out / "figures.json").read_text())
    assert jsonable(written) == figures


def test_demo_in_one_process_gives_the_figures_of_two(demo_run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    """The live runs shared among worker processes give exactly the rows of one process (seconds aside)."""
    one = ok_json(ead("demo", "-n", 4, "--max-new-tokens", 8, "--out", tmp_path, "--json", "--workers", 1))
    two = demo_run[0]
    assert two["machine"]["workers"] == 2 and one["machine"]["workers"] == 1
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(one["rows"]) == drop(two["rows"])


def test_progress_shows_as_lines_when_output_is_not_a_terminal(pair: list[str]) -> None:
    result = ead("eval", "-p", "rolling_entropy", "-n", 3, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(line.endswith("small only: started (3 to do)") for line in lines)
    assert any(line.endswith("rolling_entropy: 3/3 done") for line in lines)
    assert "rolling_entropy" in result.stdout  # the table itself stays on stdout


def test_demo_figures_file_is_strict_json(demo_run: tuple[dict[str, Any], Path]) -> None:
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    json.loads((demo_run[1] / "figures.json").read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------ user errors


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, trace_path: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    garbage = root / "garbage.parquet"
    garbage.write_bytes(bytes(range(256)) * 8)
    truncated = root / "truncated.parquet"
    truncated.write_bytes(trace_path.read_bytes()[:3000])
    foreign = root / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign)
    empty = root / "empty.txt"
    empty.write_text("\n\n")
    bad_jsonl = root / "bad.jsonl"
    bad_jsonl.write_text('"fine"\n{"prompt": 3}\n')
    good = root / "good.txt"
    good.write_text("import os\n")
    bin_spec = root / "bin.json"
    bin_spec.write_bytes(b"\xff\xfe\x00{")
    return {
        "bin_spec": bin_spec,
        "good": good,
        "garbage": garbage,
        "truncated": truncated,
        "foreign": foreign,
        "empty": empty,
        "bad_jsonl": bad_jsonl,
    }


USER_ERRORS: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("unknown policy", ["replay", "{trace}", "--policy", "nope"], ("unknown policy 'nope'", "rolling_entropy")),
    (
        "unknown parameter",
        ["replay", "{trace}", "--policy", '{"policy": "fixed", "params": {"bogus": 1}}'],
        ("'fixed'", "bogus"),
    ),
    (
        "out-of-range parameter",
        ["replay", "{trace}", "--policy", '{"policy": "random", "params": {"p": 2}}'],
        ("'random'", "p"),
    ),
    ("missing trace", ["replay", "{tmp}/missing.parquet", "--policy", "fixed"], ("missing.parquet",)),
    ("garbage trace", ["replay", "{garbage}", "--policy", "fixed"], ("garbage.parquet",)),
    ("truncated trace", ["sweep", "{truncated}", "-p", "fixed", "-g", "model=0,1"], ("truncated.parquet",)),
    (
        "foreign parquet",
        ["calibrate", "{foreign}", "-p", "rolling_entropy", "--param", "threshold", "--target-large-share", "0.3"],
        ("foreign.parquet", "not an ead-sdk trace"),
    ),
    ("bad JSON spec", ["replay", "{trace}", "--policy", '{"policy": "rolling_entropy",'], ("not valid JSON",)),
    ("missing spec file", ["replay", "{trace}", "--policy", "{tmp}/nope.json"], ("nope.json",)),
    ("grid without =", ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold"], ("'threshold'",)),
    ("grid bad range", ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold=a:b:3"], ("START:STOP:COUNT",)),
    ("grid short range", ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold=1:2"], ("START:STOP:COUNT",)),
    ("grid zero count", ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold=1:2:0"], ("COUNT >= 1",)),
    ("grid no values", ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold=,"], ("threshold=,",)),
    (
        "grid twice",
        ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold=1", "-g", "threshold=2"],
        ("threshold",),
    ),
    ("grid unknown parameter", ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "bogus=1,2"], ("bogus",)),
    (
        "sweep unknown engine",
        ["sweep", "{trace}", "-p", "rolling_entropy", "-g", "threshold=1", "--engine", "spark"],
        ("expected local or ray",),
    ),
    (
        "calibrate without target",
        ["calibrate", "{trace}", "-p", "rolling_entropy", "--param", "threshold"],
        ("target",),
    ),
    (
        "calibrate unknown parameter",
        ["calibrate", "{trace}", "-p", "rolling_entropy", "--param", "bogus", "--target-large-share", "0.3"],
        ("bogus",),
    ),
    (
        "calibrate half bounds",
        [
            "calibrate",
            "{trace}",
            "-p",
            "rolling_entropy",
            "--param",
            "threshold",
            "--target-large-share",
            "0.3",
            "--low",
            "0",
        ],
        ("--low and --high",),
    ),
    ("missing model", ["generate", "--models", "{tmp}/no-such-model", "{tmp}/other", "hi"], ("no-such-model",)),
    (
        "record missing model",
        ["record", "--models", "{tmp}/no-such-model", "{tmp}/other", "--prompts", "{good}", "--out", "{tmp}/o.parquet"],
        ("no-such-model",),
    ),
    (
        "record empty prompts",
        ["record", "--prompts", "{empty}", "--out", "{tmp}/o.parquet", "--models", "{tmp}", "{tmp}"],
        ("no prompts",),
    ),
    (
        "record bad jsonl",
        ["record", "--prompts", "{bad_jsonl}", "--out", "{tmp}/o.parquet", "--models", "{tmp}", "{tmp}"],
        ("bad.jsonl:2",),
    ),
    (
        "record missing prompts",
        ["record", "--prompts", "{tmp}/none.txt", "--out", "{tmp}/o.parquet", "--models", "{tmp}", "{tmp}"],
        ("none.txt",),
    ),
    ("generate unknown policy", ["generate", "--models", "{tmp}", "{tmp}", "-p", "nope", "hi"], ("unknown policy",)),
    ("eval no prompts", ["eval", "--models", "{tmp}", "{tmp}", "-p", "fixed", "-n", "0"], ("--prompts",)),
    ("eval unknown policy", ["eval", "--models", "{tmp}", "{tmp}", "-p", "nope", "-n", "1"], ("unknown policy",)),
    ("demo bad target", ["demo", "--target", "1.5", "--out", "{tmp}/d"], ("--target",)),
    ("sweep plot not png", ["sweep", "{trace}", "-p", "fixed", "-g", "model=0,1", "--plot", "{tmp}/p"], (".png",)),
    (
        "eval replay-only policy",
        ["eval", "--models", "{tmp}", "{tmp}", "-p", "oracle", "-n", "1"],
        ("'oracle'", "replay"),
    ),
    ("demo unwritable out", ["demo", "-n", "1", "--out", "/proc/ead-demo"], ("output directory", "/proc/ead-demo")),
    ("spec not utf-8", ["replay", "{trace}", "--policy", "{bin_spec}"], ("not UTF-8",)),
    (
        "int beyond 64 bits",
        ["replay", "{trace}", "--policy", '{"policy": "random", "params": {"seed": 100000000000000000000000}}'],
        ("'seed'", "64 bits"),
    ),
]


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "-p", "fixed", "--batch", "0"],
        ["record", "--prompts", "x", "--out", "y", "--threads", "-1"],
        ["demo", "--max-new-tokens", "0"],
        ["generate", "hi", "--batch", "1"],
    ],
    ids=["batch 0", "threads -1", "max-new-tokens 0", "unknown option"],
)
def test_option_values_out_of_range_are_usage_errors(args: list[str]) -> None:
    """Counts below 1 are refused by the option parser (exit 2, its one error line), never a traceback."""
    result = ead(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output + (result.stderr or "")


@pytest.mark.parametrize(("case", "args", "needles"), USER_ERRORS, ids=[c[0] for c in USER_ERRORS])
def test_user_errors_are_one_line_and_exit_1(
    case: str, args: list[str], needles: tuple[str, ...], trace_path: Path, bad_files: dict[str, Path], tmp_path: Path
) -> None:
    """Every mistake a user can make prints one line ``ead CMD: error: ...`` on stderr and exits 1, no traceback."""
    places = {"trace": str(trace_path), "tmp": str(tmp_path), **{k: str(v) for k, v in bad_files.items()}}
    result = ead(*(a.format(**places) if a.startswith("{") and not a.startswith('{"') else a for a in args))
    assert_user_error(result, args[0], *needles)
