"""No function in the SDK's packages is longer than a screen: one job per function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ead_sdk", "policies", "simulators", "backends")
MAX_BODY_LINES = 60

SPLIT_ELSEWHERE: set[str] = set()
"""Functions allowed to be longer while their split lands on another branch ("path:name")."""


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_body_is_over_60_lines():
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = _body_lines(node)
                    if lines > MAX_BODY_LINES and f"{rel}:{node.name}" not in SPLIT_ELSEWHERE:
                        long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
