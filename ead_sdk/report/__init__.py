"""``ead view``: an offline HTML report of what policies do on a trace.

For each sequence the page shows the text coloured by the model that emits each token under
each replayed policy, every model's entropy with the policy's thresholds and switches, and a
hover with each token's entropies, log-probs and route; above them, the policies' cost summary
and a sweep's quality/cost frontier. Needs the ``report`` extra (plotly, whose bundled
plotly.js is inlined so the file works offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ead_sdk.errors import ReportError, TokenizerMismatchError
from ead_sdk.interface import Policy
from ead_sdk.report.data import DEFAULT_MAX_SEQUENCES, build_report_data
from ead_sdk.report.page import render_html, write_html
from ead_sdk.report.tokens import pick_decoder
from ead_sdk.traces import TraceSet

__all__ = [
    "ReportError",
    "TokenizerMismatchError",
    "build_report_data",
    "render_html",
    "write_report",
]


def write_report(
    traces: TraceSet,
    policies: Sequence[Policy],
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    sequences: Sequence[int] | None = None,
    max_sequences: int = DEFAULT_MAX_SEQUENCES,
    sweep_grid: dict | None = None,
    cost_model: Any = None,
    title: str | None = None,
) -> Path:
    """Replay ``policies`` on ``traces`` and write the HTML report to ``out``.

    Args:
        traces: the trace to show.
        policies: the policies shown side by side (the first one's parameters are swept).
        out: the HTML file to write (atomically).
        tokenizer: a tokenizer directory for text (default: the demo's when it matches the
            trace's fingerprint, else token ids).
        sequences: indices of the sequences to embed (default: the first ``max_sequences``).
        max_sequences: how many sequences to embed when ``sequences`` is not given.
        sweep_grid: ``{param: values}`` swept for the first policy; ``None`` sweeps its
            ``threshold`` over the trace's entropy range; ``{}`` draws no frontier.
        cost_model: the `CostModel` of the summary (default: the trace's parameter counts).
        title: the page title.

    Returns:
        The path written.
    """
    decode, name = pick_decoder(traces.meta, None if tokenizer is None else Path(tokenizer))
    data = build_report_data(
        traces,
        policies,
        decode=decode,
        tokenizer_name=name,
        source=traces.source,
        sequences=sequences,
        max_sequences=max_sequences,
        sweep_grid=sweep_grid,
        cost_model=cost_model,
    )
    return write_html(data, out, title or f"ead view: {Path(str(traces.source)).name}")
