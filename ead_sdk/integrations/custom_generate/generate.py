"""transformers' ``custom_generate`` folder form of `ead_sdk.integrations.transformers.ead_generate`.

``model.generate(input_ids, custom_generate=ead_sdk.integrations.custom_generate_path(),
trust_remote_code=True, ead_policy="spec.json", ead_models=["path/to/small"], ...)`` loads this
file and calls `generate` with the model and every argument of the ``generate`` call. It only
delegates: transformers' own ``generate`` prepares the inputs, then runs `ead_generate`.
"""

from typing import Any


def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``model``'s standard ``generate`` preparation, then the SDK's routed decoding."""
    from transformers.generation.utils import GenerationMixin

    from ead_sdk.integrations.transformers import ead_generate

    return GenerationMixin.generate(model, *args, custom_generate=ead_generate, **kwargs)
