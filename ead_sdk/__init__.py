"""ead-sdk: token-level routing between language models of different sizes.

A *policy* watches how uncertain each next-token distribution is and decides which model (0 =
smallest) emits the next token. The same policy object runs in offline replay, in tests and in
the live decoder. ``import ead_sdk`` needs numpy only: torch and transformers load on demand.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ead_sdk.backend import Backend, DecodeRequest, Draw, RowRecord, Sampling
from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.decode import DecodeStream, GenerateResult, LaneResult, TokenEvent, generate, stream
from ead_sdk.errors import (
    BackendError,
    DuplicatePolicyError,
    EadError,
    ModelCountError,
    ParameterError,
    PluginError,
    PolicyError,
    RouterTrainingError,
    SignalError,
    SpecError,
    SpecVersionError,
    TraceError,
    UnknownPolicyError,
    WeightsIntegrityError,
)
from ead_sdk.hookspecs import hookimpl, hookspec
from ead_sdk.interface import Escalation, Policy, Routes, State, Step
from ead_sdk.params import REQUIRED, Param
from ead_sdk.registry import (
    PluginProblem,
    PolicyInfo,
    PolicyRegistry,
    list_policies,
    plugin_problems,
    reload_plugins,
)
from ead_sdk.signals import EntropyBounds, entropy, from_nats, to_nats, topk_entropy_bounds
from ead_sdk.specs import load_policy, save_policy
from ead_sdk.state import concat_states, lane_count, mask_state, select_lanes

try:
    __version__ = version("ead-sdk")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "Backend",
    "DecodeRequest",
    "Draw",
    "RowRecord",
    "Sampling",
    "DecodeStream",
    "GenerateResult",
    "LaneResult",
    "TokenEvent",
    "generate",
    "stream",
    "REQUIRED",
    "BackendError",
    "CostLedger",
    "CostModel",
    "CostReport",
    "DuplicatePolicyError",
    "EadError",
    "EntropyBounds",
    "Escalation",
    "ModelCountError",
    "Param",
    "ParameterError",
    "PluginError",
    "PluginProblem",
    "Policy",
    "PolicyError",
    "PolicyInfo",
    "PolicyRegistry",
    "RouterTrainingError",
    "Routes",
    "SignalError",
    "SpecError",
    "SpecVersionError",
    "State",
    "Step",
    "TraceError",
    "UnknownPolicyError",
    "WeightsIntegrityError",
    "concat_states",
    "entropy",
    "from_nats",
    "hookimpl",
    "hookspec",
    "lane_count",
    "list_policies",
    "load_policy",
    "mask_state",
    "plugin_problems",
    "reload_plugins",
    "save_policy",
    "select_lanes",
    "to_nats",
    "topk_entropy_bounds",
]
