"""The documentation is tested: every code block of README.md and docs/*.md runs, in order per page.

Collected by Sybil (a well-kept documentation test runner, also used by e.g. testfixtures and
zope), because it runs each page's blocks in order in one shared namespace, lets a page mark a
block it cannot run with a visible reason (``<!-- skip: next "why" -->``, a pytest skip), and
takes a new block language as one more parser. Each page runs in a fresh temporary directory,
so no example may depend on the repository's layout or the current directory.

Languages run: ``python`` (in this process, one namespace per page), ``bash`` (``bash -e -o
pipefail`` in the page's directory, with the installed ``ead`` and this Python first on PATH),
and ``toml`` and ``json`` (parsed). ``text`` blocks (output, trees) are not run; tests/test_docs_fences.py
checks that every fence is tagged with one of these languages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parent
# Session fixtures shared by tests/ and the docs' code blocks: real model folders and engines.
pytest_plugins = ["tests.engine_fixtures"]
SHELL_TIMEOUT_S = 600


def _shell_env() -> dict[str, str]:
    """The environment of a shell block: the installed ``ead`` and this Python resolve first."""
    scripts = sysconfig.get_path("scripts")
    bins = dict.fromkeys([scripts, str(Path(sys.executable).parent)])
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "120"  # rich tables at a fixed width, whatever the terminal
    return env


def run_shell(example) -> None:
    """Run a ``bash`` block in the page's directory; a non-zero exit fails with the block's output."""
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", example.parsed],
        cwd=example.namespace["_page_dir"],
        env=_shell_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"shell block exited {proc.returncode}:\n{example.parsed}\n--- stdout ---\n{proc.stdout[-4000:]}"
            f"\n--- stderr ---\n{proc.stderr[-4000:]}"
        )


def parse_toml(example) -> None:
    """A ``toml`` block must be valid TOML (checked where Python has tomllib, 3.11 on)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        return
    tomllib.loads(example.parsed)


def parse_json(example) -> None:
    """A ``json`` block must be valid JSON."""
    json.loads(example.parsed)


def _page_setup(namespace: dict) -> None:
    """Each page starts in a fresh, empty temporary directory (its shell and Python blocks alike)."""
    namespace["_page_dir"] = tempfile.mkdtemp(prefix="ead-docs-")
    namespace["_previous_cwd"] = os.getcwd()
    os.chdir(namespace["_page_dir"])


def _page_teardown(namespace: dict) -> None:
    os.chdir(namespace["_previous_cwd"])
    shutil.rmtree(namespace["_page_dir"], ignore_errors=True)


def _pages(patterns: list[str], excludes: list[str] = (), fixtures: list[str] = ()) -> Sybil:
    return Sybil(
        parsers=[
            SkipParser(),
            PythonCodeBlockParser(),
            CodeBlockParser(language="bash", evaluator=run_shell),
            CodeBlockParser(language="toml", evaluator=parse_toml),
            CodeBlockParser(language="json", evaluator=parse_json),
        ],
        patterns=patterns,
        excludes=list(excludes),
        path=".",
        setup=_page_setup,
        teardown=_page_teardown,
        fixtures=list(fixtures),
    )


# docs/production.md runs against the real engines the session starts once (tests/engine_fixtures.py):
# its blocks see the fixtures below by name.
ENGINE_PAGES = ["docs/production.md"]
ENGINE_FIXTURES = ["smollm2_large", "smollm2_small", "vllm_server_large", "vllm_server_small"]

pytest_collect_file = (
    _pages(["README.md", "docs/*.md"], excludes=ENGINE_PAGES) + _pages(ENGINE_PAGES, fixtures=ENGINE_FIXTURES)
).pytest()
