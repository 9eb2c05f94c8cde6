"""The report as one self-contained HTML file: plotly.js, the page's script and its data inline.

plotly.js comes from the ``plotly`` Python package (its bundled ``plotly.min.js``), so the page
needs no network. The data is embedded once as JSON; the script renders the chosen sequence on
demand, so a trace of thousands of tokens costs one small plot per policy, not one per sequence.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ead_sdk.atomic_write import atomic_path

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ead-sdk {version}">
<title>{title}</title>
<style>{css}</style>
<script>{plotly}</script>
</head>
<body>
<header><h1>{title}</h1><p id="subtitle"></p></header>
<main>
<section id="summary"><h2>Cost and quality of each policy, replayed on the whole trace</h2>
<p class="note">Replay is teacher-forced: every policy is scored along the trace's recorded token path.
Cost ratio: cost of every forward (catch-up and retried ones included) / the largest model alone, costs in {unit}.</p>
</section>
<section id="frontier-section" style="display:none"><h2 id="frontier-title"></h2>
<div id="frontier"></div><p class="note">Hover a point to see its configuration.</p></section>
<section id="sequence"><h2>Sequences</h2>
<div id="nav"><button id="prev" type="button">&larr; previous</button><select id="picker"></select>
<button id="next" type="button">next &rarr;</button><span class="note" id="shown-note"></span></div>
<p class="legend" id="legend"></p>
<div id="panels"></div>
</section>
</main>
<div id="tooltip"></div>
<script id="ead-data" type="application/json">{data}</script>
<script>{script}</script>
</body>
</html>
"""


def _asset(name: str) -> str:
    return resources.files("ead_sdk.report").joinpath("assets", name).read_text(encoding="utf-8")


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its ``<script>`` element early: ``<``, ``>`` and ``&`` as JSON unicode escapes."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict[str, Any], title: str) -> str:
    """The report page for ``data`` (built by `build_report_data`) as one HTML string."""
    from plotly.offline import get_plotlyjs

    from ead_sdk import __version__

    return TEMPLATE.format(
        version=html.escape(__version__),
        title=html.escape(title),
        css=_asset("report.css"),
        plotly=get_plotlyjs(),
        unit="parameter counts" if data.get("cost_unit") == "params" else "measured seconds",
        data=_json_for_script(data),
        script=_asset("report.js"),
    )


def write_html(data: dict[str, Any], path: str | Path, title: str) -> Path:
    """Write the page atomically to ``path`` and return it."""
    path = Path(path)
    text = render_html(data, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
