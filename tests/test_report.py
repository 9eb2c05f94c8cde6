"""`ead view`'s report data and page: the same figures as replay, offline HTML, clear errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from ead_sdk.cli import app
from ead_sdk.cost import CostModel
from ead_sdk.report import ReportError, TokenizerMismatchError, build_report_data, render_html, write_report
from ead_sdk.report.data import threshold_lines
from ead_sdk.report.tokens import ids_decoder, pick_decoder
from ead_sdk.simulators import replay, synthetic_traces
from ead_sdk.specs import load_policy
from ead_sdk.traces import write_traces

pytest.importorskip("plotly")

RE = {"policy": "rolling_entropy", "params": {"window": 3, "threshold": 1.2, "unit": "nats"}, "escalation": "retry"}
HY = {"policy": "hysteresis", "params": {"upper": 2.0, "lower": 1.0, "unit": "bits"}}


def _data(traces, **kwargs):
    policies = [load_policy(RE), load_policy(HY)]
    return build_report_data(traces, policies, decode=ids_decoder, tokenizer_name=None, source="mem", **kwargs)


def _embedded(html: str) -> dict:
    block = re.search(r'<script id="ead-data" type="application/json">(.*?)</script>', html, re.S)
    assert block
    return json.loads(block.group(1))


def test_report_routes_and_summary_are_replays():
    traces = synthetic_traces(12, (5, 40), seed=3)
    data = _data(traces, sweep_grid={})
    assert len(data["sequences"]) == 12 and "sweep" not in data
    for section, spec in zip(data["policies"], (RE, HY), strict=True):
        result = replay(traces, load_policy(spec))
        for k in range(12):
            assert section["routes"][k] == result.routes(k).tolist()
            assert len(section["computed"][k]) == traces[k].length
        assert section["summary"]["cost_ratio"] == pytest.approx(result.summary()["cost_ratio"])
        assert section["report"]["catchup"] == list(result.report().catchup)
    seq = data["sequences"][4]
    assert seq["tokens"] == traces[4].token_ids.tolist()
    np.testing.assert_allclose(np.array(seq["entropy"], float), traces[4].entropy, atol=5e-5)
    np.testing.assert_allclose(np.array(seq["logprob"], float), traces[4].token_logprob, atol=5e-5)


def test_thresholds_are_drawn_in_nats():
    assert threshold_lines(RE) == [{"name": "threshold", "value": 1.2, "nats": 1.2}]
    lines = {d["name"]: d["nats"] for d in threshold_lines(load_policy(HY).spec())}
    assert lines == pytest.approx({"upper": 2.0 * math.log(2), "lower": 1.0 * math.log(2)})


def test_default_sweep_covers_the_first_policy_threshold_and_marks_the_frontier():
    traces = synthetic_traces(16, 30, seed=1)
    data = _data(traces, max_sequences=3)
    assert len(data["sequences"]) == 3 and data["num_sequences"] == 16
    sweep = data["sweep"]
    assert sweep["policy"] == "rolling_entropy" and sweep["escalation"] == "retry"
    assert len(sweep["points"]) == 24
    assert all(p["config"]["window"] == 3 and p["config"]["unit"] == "nats" for p in sweep["points"])
    assert {tuple(p["varied"]) for p in sweep["points"]} == {("threshold",)}
    front = [p for p in sweep["points"] if p["frontier"]]
    assert front
    for p in front:  # nothing else is both cheaper and better
        assert not any(
            q["cost_ratio"] <= p["cost_ratio"] and q["quality"] > p["quality"] for q in sweep["points"] if q is not p
        )


def test_page_is_self_contained_and_escapes_its_data(tmp_path):
    traces = synthetic_traces(3, 8, seed=2)
    data = _data(traces, sweep_grid={})
    data["sequences"][0]["prompt"] = "</script><script>alert(1)</script><!--"
    html = render_html(data, "t </title>")
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+href=", html)
    assert _embedded(html)["sequences"][0]["prompt"] == data["sequences"][0]["prompt"]
    assert "<title>t &lt;/title&gt;</title>" in html


def test_measured_cost_model_gives_predicted_seconds(tmp_path):
    traces = synthetic_traces(4, 10, seed=2)
    cm = CostModel.from_seconds_per_token([0.001, 0.01], catchup_seconds=[0.0001, 0.001])
    out = write_report(traces, [load_policy(RE)], tmp_path / "r.html", sweep_grid={}, cost_model=cm)
    data = _embedded(out.read_text(encoding="utf-8"))
    assert data["cost_unit"] == "seconds"
    result = replay(traces, load_policy(RE), cost_model=cm)
    assert data["policies"][0]["predicted_seconds"] == pytest.approx(result.report().cost)


def test_bad_sequence_and_tokenizer_are_clear_errors(tmp_path):
    traces = synthetic_traces(3, 8, seed=2)
    with pytest.raises(ReportError, match="sequence 7 is out of range: the trace has 3 sequences"):
        _data(traces, sequences=[0, 7])
    with pytest.raises(ReportError, match="at least one policy"):
        build_report_data(traces, [], decode=ids_decoder, tokenizer_name=None, source="mem")
    pytest.importorskip("transformers")
    from ead_sdk.demo import tokenizer_dir

    with pytest.raises(TokenizerMismatchError, match="differs from the trace's"):
        pick_decoder(traces.meta, tokenizer_dir())
    decode, name = pick_decoder(traces.meta, None)  # the demo tokenizer does not match: ids
    assert name is None and decode([5, 6], joined=False) == ["⟨5⟩", "⟨6⟩"]


def test_cli_view_writes_the_report_and_refuses_a_non_html_path(tmp_path):
    path = tmp_path / "t.parquet"
    write_traces(synthetic_traces(5, 12, seed=4), path)
    out = tmp_path / "view.html"
    runner = CliRunner()
    res = runner.invoke(app, ["view", str(path), "-p", json.dumps(RE), "-p", "hysteresis", "-o", str(out), "-s", "2"])
    assert res.exit_code == 0, res.output
    data = _embedded(out.read_text(encoding="utf-8"))
    assert [s["index"] for s in data["sequences"]] == [2]
    assert [p["spec"]["policy"] for p in data["policies"]] == ["rolling_entropy", "hysteresis"]
    res = runner.invoke(app, ["view", str(path), "-o", str(tmp_path / "view.png")])
    assert res.exit_code == 1 and "give a path ending in .html" in res.output
    res = runner.invoke(app, ["view", str(path), "-s", "9", "-o", str(out)])
    assert res.exit_code == 1 and "sequence 9 is out of range" in res.output
    res = runner.invoke(app, ["view", str(path), "-g", "threshold=0.5:2:4", "-p", json.dumps(RE), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len(_embedded(out.read_text(encoding="utf-8"))["sweep"]["points"]) == 4
