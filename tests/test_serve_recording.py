"""ead serve --record: one trace row per upstream request, rotating stream files readable while the server runs."""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest

pytest.importorskip("uvicorn")

from serve_harness import ChatToyTokenizer, running_server, toy_ladder  # noqa: E402

from ead_sdk.errors import TraceWarning  # noqa: E402
from ead_sdk.serve.state import ServeConfig  # noqa: E402
from ead_sdk.specs import load_policy  # noqa: E402
from ead_sdk.traces import read_traces  # noqa: E402


def _read(paths, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceWarning)
        sets = [read_traces(p, **kw) for p in paths]
    return sets, caught


def test_served_traffic_is_recorded_per_upstream_request_and_readable_while_serving(tmp_path):
    engines = toy_ladder()
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 3.0, "window": 1}})
    config = ServeConfig(record_dir=tmp_path, record_rotate_rows=4)
    with running_server(engines, policy, ChatToyTokenizer(engines[0].tokenizer), config) as srv:
        for i in range(6):
            body = {"prompt": [i, 2, 3], "max_tokens": 12, "temperature": 0}
            assert httpx.post(f"{srv.url}/v1/completions", json=body).status_code == 200
        live = sorted(tmp_path.glob("*/*.arrows"))
        sets, caught = _read(live, recover=True)  # the current files are still open for writing
        assert sum(len(s.table) for s in sets) > 0
    files = {m: sorted((tmp_path / m).glob("served-*.arrows")) for m in ("small", "large")}
    for m, engine in zip(("small", "large"), engines, strict=True):
        asked = [r for r in engine.log.requests if r.request_id != "ead-serve-probe"]
        sets, caught = _read(files[m])
        assert not caught  # every file was closed at shutdown
        rows = [row for s in sets for row in s.table.to_pylist()]
        assert len(files[m]) == -(-len(rows) // 4)  # rotated every 4 rows
        assert sorted(tuple(r["prompt_ids"]) for r in rows) == sorted(r.prompt for r in asked if r.prompt)
        for row in rows:
            prefix = list(row["prompt_ids"])
            for token, entropy in zip(row["token_ids"], row["entropy"], strict=True):
                lp = engine.logprobs(prefix)
                assert token == int(np.argmax(lp))  # what the model generated on that request
                assert entropy[0] == pytest.approx(float(-(np.exp(lp) * lp).sum()), rel=1e-5)
                prefix.append(token)
        assert sets[0].meta.model_names == (m,) and sets[0].meta.generation["recorded_by"] == "ead serve"
