"""The documentation's code blocks are all of a kind the docs tests run (conftest.py), and few are skipped.

A fence without a language, or in a language the collector does not know, would silently never
run; a skip without a reason would hide why. writing-a-policy.md must also work as what it says
it is: its blocks pasted into one file make a module that passes ``check_policy``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "bash", "toml", "json"}  # run or parsed by conftest.py
SHOWN = {"text"}  # output, trees, messages: shown, not run
FENCE = re.compile(r"^```(\S*)", re.M)
SKIP = re.compile(r"<!--\s*skip:\s*(\w+)(.*?)-->", re.S)
MAX_SKIPS = 6  # GPU, multi-node cluster, jobs of many minutes, installs: nothing else


def _fences(text: str) -> list[str]:
    """The language of each opening fence (closing fences alternate with them)."""
    return [m.group(1) for m in FENCE.finditer(text)][::2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_fence_names_a_language_the_docs_tests_know(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert len(FENCE.findall(text)) % 2 == 0, f"{page.name}: an unclosed fence"
    unknown = [lang or "(none)" for lang in _fences(text) if lang not in RUN | SHOWN]
    assert not unknown, (
        f"{page.name}: fences the docs tests would not run: {unknown} (use one of {sorted(RUN | SHOWN)})"
    )


def test_skips_are_few_and_each_says_why() -> None:
    skips = []
    for page in PAGES:
        for action, reason in SKIP.findall(page.read_text(encoding="utf-8")):
            assert action == "next", f"{page.name}: only 'skip: next' marks, one block each ({action})"
            reason = reason.strip()
            assert re.fullmatch(r'"[^"]{20,}"', reason), f"{page.name}: a skip needs a quoted reason: {reason!r}"
            skips.append((page.name, reason))
    assert len(skips) <= MAX_SKIPS, skips


def test_writing_a_policy_pasted_into_a_file_passes_check_policy(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "writing-a-policy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    module = tmp_path / "streak.py"
    module.write_text("\n\n".join(blocks), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(module)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "streak passes check_policy and its property" in proc.stdout
