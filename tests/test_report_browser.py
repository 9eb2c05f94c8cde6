"""`ead view`'s page in a real browser: Debian's headless chromium, driven by playwright.

`.ci/install-browser` installs chromium (CI runs it); playwright only drives it (no browser
download). The page is the one `ead view` writes for the embedded demo traces with no arguments.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ead_sdk.cli import app

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: run .ci/install-browser (apt-get install chromium)"
)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view") / "report.html"
    result = CliRunner().invoke(app, ["view", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def page_session(demo_report):
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        problems: list[str] = []
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(demo_report.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        yield page, problems, requests
        browser.close()


def test_page_loads_offline_without_console_errors(page_session, demo_report):
    page, problems, requests = page_session
    assert problems == []
    assert [u for u in requests if not u.startswith("file:")] == []  # nothing fetched from a network


def test_page_has_summary_frontier_and_one_panel_per_policy(page_session):
    page, _, _ = page_session
    rows = page.locator("#summary-table tr")
    assert rows.count() == 3  # header + the two default policies
    assert "rolling_entropy" in rows.nth(1).inner_text() and "hysteresis" in rows.nth(2).inner_text()
    assert page.locator("#frontier .scatterlayer .point").count() >= 24
    assert page.locator("#panels .panel").count() == 2
    assert page.locator("#panels .panel .chart .scatterlayer .trace").count() >= 2 * 3  # 2 models + switches, each
    assert page.locator("#picker option").count() == 192  # every demo sequence is embedded
    text = page.locator("#panels .panel").first.locator(".tokens").inner_text()
    assert "⟨" not in text and len(text) > 10  # decoded by the demo tokenizer, not shown as ids


def test_tokens_are_coloured_by_route_and_hover_shows_entropies(page_session):
    page, problems, _ = page_session
    longest = page.evaluate("""() => {
        const d = JSON.parse(document.getElementById('ead-data').textContent);
        let best = 0; d.sequences.forEach((s, k) => { if (s.tokens.length > d.sequences[best].tokens.length) best = k; });
        return best; }""")
    page.select_option("#picker", str(longest))
    panel = page.locator("#panels .panel").first
    tokens = panel.locator(".tokens .tok")
    routes = page.evaluate(
        f"() => JSON.parse(document.getElementById('ead-data').textContent).policies[0].routes[{longest}]"
    )
    assert tokens.count() == len(routes)
    colours = tokens.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    by_route = {r: {c for c, rr in zip(colours, routes, strict=True) if rr == r} for r in set(routes)}
    assert all(len(v) == 1 for v in by_route.values())  # one colour per model
    assert len({next(iter(v)) for v in by_route.values()}) == len(by_route)  # and different models differ
    switches = sum(1 for a, b in zip(routes, routes[1:], strict=False) if a != b)
    assert panel.locator(".tok.switch").count() == switches
    tokens.nth(len(routes) // 2).hover()
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "route:" in text and "entropy" in text and "log-prob" in text and "small" in text and "large" in text
    page.click("#next")
    assert page.locator("#picker").input_value() == str(longest + 1)
    assert problems == []


def test_screenshot_is_not_blank(page_session, tmp_path):
    from PIL import Image

    page, _, _ = page_session
    png = page.screenshot(full_page=True)
    (tmp_path / "report.png").write_bytes(png)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    distinct = np.unique(pixels.reshape(-1, 3)[::7], axis=0).shape[0]
    assert distinct > 50  # text, plots and coloured tokens, not one flat colour
    assert pixels.std() > 10
