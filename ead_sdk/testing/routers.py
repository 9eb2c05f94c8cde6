"""Example specs for generic tests that run every installed policy, the `learned` one included.

Most policies load by name with their defaults; `learned` needs a trained network. `example_spec`
gives it a small seeded one (random weights over the default features, k = 4), so a test that
loops over `installed_policies()` can run it like the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def example_router(
    k: int = 4, hidden: int = 3, seed: int = 0, features: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """A seeded random router (the ``router`` parameter of `learned`) reading ``k`` log-probabilities.

    ``features`` picks the router's inputs (default: `ead_sdk.router.features.DEFAULT_FEATURES`).
    """
    from ead_sdk.router import FeatureSpec, RouterNetwork

    spec = FeatureSpec(k=k) if features is None else FeatureSpec(tuple(features), k=k)
    rng = np.random.default_rng(seed)
    layers = (
        (rng.normal(size=(spec.width, hidden)), rng.normal(size=hidden)),
        (rng.normal(size=(hidden, 1)), rng.normal(size=1)),
    )
    return RouterNetwork(spec, layers).to_json()


def example_spec(name: str, **spec: Any) -> dict[str, Any]:
    """``{"policy": name, **spec}``, with an `example_router` added for the ``learned`` policy."""
    out: dict[str, Any] = {"policy": name, **spec}
    if name == "learned":
        out["params"] = {"router": example_router(), **out.get("params", {})}
    return out
