"""The embedded demo: a real, tiny, byte-level model pair that needs no download.

* :mod:`ead_sdk.demo.task` -- the task (complete held-out lines of the Python standard
  library's own source), its training stream, held-out prompts and per-prompt scores.
* :mod:`ead_sdk.demo.tokenizer` -- the shared byte-level tokenizer (Hugging Face format).
* :mod:`ead_sdk.demo.train` -- the deterministic CPU training script that produced the weights::

      python -m ead_sdk.demo.train            # writes ead_sdk/demo/weights/{small,large,tokenizer}

* :mod:`ead_sdk.demo.evaluate_pair` -- measures the pair on the held-out set and writes
  ``weights/results.json``::

      python -m ead_sdk.demo.evaluate_pair

The committed weights: ``weights/small`` and ``weights/large`` (``config.json`` +
``model.safetensors``) and their shared tokenizer ``weights/tokenizer``, loadable offline with
``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)`` and
``AutoTokenizer.from_pretrained(tokenizer_dir(), local_files_only=True)``. :func:`assets` gives every
shipped file's path (the pair, the traces, a prompts file) wherever the package is installed::

    from ead_sdk.demo import assets

    demo = assets()
    demo.models  # (small, large): pass them wherever a model pair is asked for

Importing this package imports neither ``torch`` nor ``transformers``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DemoAssets",
    "assets",
    "demo_dir",
    "weights_dir",
    "small_model_dir",
    "large_model_dir",
    "tokenizer_dir",
    "results_path",
    "model_dirs",
    "prompts_path",
]


def demo_dir() -> Path:
    """This package's directory."""
    return Path(__file__).resolve().parent


def weights_dir() -> Path:
    """The directory of the committed demo weights."""
    return demo_dir() / "weights"


def small_model_dir() -> Path:
    """The small model's directory (route 0)."""
    return weights_dir() / "small"


def large_model_dir() -> Path:
    """The large model's directory (route 1)."""
    return weights_dir() / "large"


def tokenizer_dir() -> Path:
    """The tokenizer both demo models share (kept once, beside the model directories)."""
    return weights_dir() / "tokenizer"


def results_path() -> Path:
    """The pair's measured figures, written by ``python -m ead_sdk.demo.evaluate_pair``."""
    return weights_dir() / "results.json"


def model_dirs() -> list[Path]:
    """The pair, smallest first (route index 0 = small, 1 = large)."""
    return [small_model_dir(), large_model_dir()]


def prompts_path() -> Path:
    """A few shipped prompts (JSON Lines, one ``{"prompt": ...}`` per line): held-out demo-task prompts."""
    return demo_dir() / "prompts.jsonl"


@dataclass(frozen=True)
class DemoAssets:
    """The paths of what ships with the SDK for examples: the model pair, its traces, prompts.

    Attributes:
        small: the small model's directory (route 0); the pair shares ``tokenizer``.
        large: the large model's directory (route 1).
        models: ``(small, large)``, smallest first, as every model-pair API takes them.
        tokenizer: the shared byte-level tokenizer's directory.
        traces: traces recorded from the pair (one Parquet file, 192 sequences, top-8 log-probs).
        prompts: prompts for the pair (JSON Lines; ``ead record --prompts`` reads it as is).
        results: the pair's measured figures (``python -m ead_sdk.demo.evaluate_pair``).
    """

    small: Path
    large: Path
    tokenizer: Path
    traces: Path
    prompts: Path
    results: Path

    @property
    def models(self) -> tuple[Path, Path]:
        return (self.small, self.large)

    def prompt_texts(self) -> list[str]:
        """The shipped prompts as strings, in file order."""
        lines = self.prompts.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["prompt"] for line in lines if line.strip()]


def assets() -> DemoAssets:
    """Where the shipped demo files are, whatever the current directory (absolute paths)."""
    return DemoAssets(
        small=small_model_dir(),
        large=large_model_dir(),
        tokenizer=tokenizer_dir(),
        traces=demo_dir() / "traces" / "demo.parquet",
        prompts=prompts_path(),
        results=results_path(),
    )
