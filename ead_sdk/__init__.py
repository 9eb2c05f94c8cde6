"""ead-sdk: token-level routing between language models of different sizes.

A *policy* watches how uncertain each next-token distribution is and decides which model (0 =
smallest) emits the next token. The same policy object runs in offline replay, in tests and in
the live decoder. ``import ead_sdk`` needs numpy only: torch and transformers load on demand.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ead_sdk.arrays import as_namespace, namespace
from ead_sdk.backend import Backend, BatchSession, DecodeRequest, Draw, RowRecord, Sampling
from ead_sdk.cost import CostLedger, CostModel, CostReport, sum_reports
from ead_sdk.decode import DecodeStream, GenerateResult, LaneResult, TokenEvent, generate, stream
from ead_sdk.errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    ConformanceError,
    CostModelError,
    DecodeStreamError,
    DuplicatePolicyError,
    EadError,
    EngineError,
    EngineRequestError,
    EngineStartError,
    HostSyncError,
    MissingStepFieldError,
    ModelCountError,
    ModelSourceError,
    ObserverError,
    ParameterError,
    PluginError,
    PluginWarning,
    PolicyError,
    RayConnectionError,
    RayUnavailableError,
    RecordingWarning,
    ReplayOnlyPolicyError,
    ReportError,
    RouteError,
    RouterTrainingError,
    ServeError,
    ServeRequestError,
    SignalError,
    SignalUnavailableError,
    SpecError,
    SpecVersionError,
    StateError,
    TokenizerMismatchError,
    TraceError,
    TraceWarning,
    UnknownPolicyError,
    UpstreamError,
    UserError,
    WeightsIntegrityError,
)
from ead_sdk.handoff import HandoffRouter
from ead_sdk.hookspecs import hookimpl, hookspec
from ead_sdk.interface import Escalation, Policy, Routes, State, Step
from ead_sdk.params import REQUIRED, Param
from ead_sdk.registry import (
    PluginProblem,
    PolicyInfo,
    PolicyRegistry,
    installed_policies,
    plugin_problems,
    reload_plugins,
)
from ead_sdk.signal_spec import SignalSpec
from ead_sdk.signals import EntropyBounds, entropy, from_nats, to_nats, topk_entropy_bounds, topk_entropy_estimate
from ead_sdk.specs import load_policy, save_policy
from ead_sdk.state import concat_states, lane_count, mask_state, select_lanes

try:
    __version__ = version("ead-sdk")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "Backend",
    "BackendError",
    "BatchSession",
    "ConformanceError",
    "CostLedger",
    "CostModel",
    "CostModelError",
    "CostReport",
    "DecodeRequest",
    "DecodeStream",
    "DecodeStreamError",
    "Draw",
    "DuplicatePolicyError",
    "EadError",
    "EngineError",
    "EngineStartError",
    "EngineRequestError",
    "EntropyBounds",
    "Escalation",
    "GenerateResult",
    "HandoffRouter",
    "HostSyncError",
    "LaneResult",
    "MissingStepFieldError",
    "ModelCountError",
    "ModelSourceError",
    "ObserverError",
    "Param",
    "ParameterError",
    "PluginError",
    "PluginProblem",
    "PluginWarning",
    "Policy",
    "PolicyError",
    "PolicyInfo",
    "PolicyRegistry",
    "REQUIRED",
    "RayConnectionError",
    "RayUnavailableError",
    "RecordingWarning",
    "ReplayOnlyPolicyError",
    "ReportError",
    "TokenizerMismatchError",
    "RouteError",
    "RouterTrainingError",
    "Routes",
    "RowRecord",
    "Sampling",
    "ServeError",
    "ServeRequestError",
    "SignalError",
    "SignalSpec",
    "SignalUnavailableError",
    "SpecError",
    "SpecVersionError",
    "State",
    "StateError",
    "Step",
    "TokenEvent",
    "TraceError",
    "TraceWarning",
    "UnknownPolicyError",
    "UpstreamError",
    "UserError",
    "WeightsIntegrityError",
    "as_namespace",
    "concat_states",
    "entropy",
    "from_nats",
    "generate",
    "hookimpl",
    "hookspec",
    "installed_policies",
    "lane_count",
    "load_policy",
    "mask_state",
    "namespace",
    "plugin_problems",
    "reload_plugins",
    "save_policy",
    "select_lanes",
    "stream",
    "sum_reports",
    "to_nats",
    "topk_entropy_bounds",
    "topk_entropy_estimate",
]
