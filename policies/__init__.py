"""The built-in routing policies.

Each module is a first-party plugin: it is listed under the ``ead_sdk`` entry-point group in
``pyproject.toml`` and registers its policy through ``register_policies(register)``, exactly as
a third-party plugin does. Import the classes from here for type checks or subclassing.
"""

from __future__ import annotations

from ead_sdk.errors import MissingStepFieldError
from ead_sdk.policies.confidence import ConfidencePolicy
from ead_sdk.policies.cost_budget import CostBudgetPolicy
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.hysteresis import HysteresisPolicy
from ead_sdk.policies.oracle import OraclePolicy
from ead_sdk.policies.random import RandomPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.policies.top_h import TopHKept, TopHPolicy, top_h_kept

__all__ = [
    "ConfidencePolicy",
    "CostBudgetPolicy",
    "FixedPolicy",
    "HysteresisPolicy",
    "MissingStepFieldError",
    "OraclePolicy",
    "RandomPolicy",
    "RollingEntropyPolicy",
    "TopHKept",
    "TopHPolicy",
    "top_h_kept",
]
