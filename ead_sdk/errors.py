"""The SDK's exception and warning classes, all in one place.

Every error the SDK raises on purpose derives from `EadError`. An error about a bad argument is
also a `ValueError` (a bad value) or a `TypeError` (a value of the wrong type), so callers that
catch the built-in classes keep working. Errors about a plugin carry it as ``plugin``.
"""

from __future__ import annotations

from typing import Any


class EadError(Exception):
    """Root of every error the SDK raises on purpose."""


# -- arguments --------------------------------------------------------------------------------
class ArgumentError(EadError, ValueError):
    """An argument with a value the call cannot use (out of range, inconsistent with another)."""


class ArgumentTypeError(EadError, TypeError):
    """An argument of the wrong type (a policy that is not a `Policy`, a path that is not one)."""


class UserError(ArgumentError):
    """A bad command-line argument (a malformed ``--grid``, a missing prompts file...)."""


class EngineError(ArgumentError):
    """Options of an offline engine (threads, batch size, lanes) that it cannot run with."""


class RayUnavailableError(EadError, ImportError):
    """`RayEngine` was asked for but Ray Data is not installed."""


# -- signals, states and routes ---------------------------------------------------------------
class SignalError(EadError, ValueError):
    """Logits or log-probabilities that no distribution can come from (NaN, +inf, all -inf)."""


class StateError(EadError, ValueError):
    """Policy states that cannot be masked, selected or concatenated (lane counts or keys differ)."""


class MissingStepFieldError(EadError, ValueError):
    """A policy needs a `Step` field (``logprobs``, ``future``) that the caller left empty."""


class RouteError(EadError, ValueError):
    """A policy returned routes of the wrong shape."""


class CostModelError(EadError, ValueError):
    """A cost model that does not fit the models it prices, or a ledger asked the impossible."""


# -- specs and policies -----------------------------------------------------------------------
class SpecError(EadError, ValueError):
    """A policy spec that cannot be turned into a policy."""


class UnknownPolicyError(SpecError):
    """The spec names a policy that no installed plugin provides."""


class ParameterError(SpecError):
    """An unknown, missing, mistyped or out-of-range policy parameter."""


class SpecVersionError(SpecError):
    """The spec's version is one the installed plugin cannot read."""


class ModelCountError(EadError, ValueError):
    """A policy was asked to route between more (or fewer) models than it supports."""


class ReplayOnlyPolicyError(EadError, ValueError):
    """A replay-only policy (one that reads `Step.future`) was asked to run live."""


class ConformanceError(EadError, AssertionError):
    """A policy broke the policy contract; the message names the check, the step and the lane."""


# -- plugins ----------------------------------------------------------------------------------
class PluginError(EadError):
    """A plugin failed to import, to validate, or to register its policies.

    Attributes:
        plugin: the plugin's name (or names, for a list of problems), when known.
    """

    def __init__(self, message: str, *, plugin: Any = None):
        super().__init__(message)
        self.plugin = plugin


class DuplicatePolicyError(PluginError):
    """Two plugins register a policy under the same name."""


class PluginWarning(UserWarning):
    """A plugin was skipped because it failed to import, validate or register."""


# -- traces, backends, live decoding ----------------------------------------------------------
class TraceError(EadError, ValueError):
    """A trace file or dataset that is malformed, truncated, foreign or from a newer format."""


class RecordingWarning(UserWarning):
    """A lane's signals could not be recorded (non-finite values); its sequence was left out."""


class TraceWarning(UserWarning):
    """A trace was read only in part (a truncated or unterminated stream)."""


class BackendError(EadError):
    """A model backend that cannot serve the request (mismatched tokenizers, bad prompts...)."""


class DecodeStreamError(EadError, RuntimeError):
    """A decode stream's result was asked for after the stream was closed early."""


class ObserverError(EadError, ValueError):
    """A `PolicyObserver` used in a way it cannot honour (bad options, no generate observed)."""


class HostSyncError(EadError):
    """Code that must stay on the device asked for a value on the host."""


class RayConnectionError(EadError, ConnectionError):
    """The Ray cluster named by ``address`` could not be joined (unreachable, or its token refused)."""


class RouterTrainingError(EadError, ValueError):
    """Traces that cannot train or label a learned router (k too small, too few sequences...)."""


class WeightsIntegrityError(SpecError):
    """A learned policy's weights file is missing, unreadable, or does not match its SHA-256."""


class ModelSourceError(BackendError):
    """A model's source cannot be read: the package that carries its weights is not installed, or is damaged."""


class EngineStartError(BackendError, RuntimeError):
    """A serving engine's process (``vllm serve``...) exited or did not get ready; the message has its log's tail."""


class PolicyError(EadError):
    """A policy's ``decide`` failed, or returned routes or state that break the contract."""


class ReportError(EadError, ValueError):
    """An HTML report (``ead view``) cannot be built from the given trace, policies or options."""


class TokenizerMismatchError(ReportError):
    """The tokenizer given for a report is not the one the trace was recorded with."""


# -- serving engines and the lane hand-off router ---------------------------------------------
class SignalUnavailableError(SpecError):
    """A spec's signal (exact entropy, or a top-k estimate with its k) cannot be computed where it is deployed."""


class UpstreamError(BackendError, RuntimeError):
    """A serving engine (vLLM, an OpenAI-compatible server, llama.cpp) failed one request.

    Attributes:
        engine: the engine's name.
        lane: the lane whose request failed, when known.
    """

    def __init__(self, message: str, *, engine: str | None = None, lane: int | None = None):
        super().__init__(message)
        self.engine = engine
        self.lane = lane


class EngineRequestError(UpstreamError, ValueError):
    """A serving engine refused a request before running it (bad token ids, no room in its context...)."""


# -- ead serve --------------------------------------------------------------------------------
class ServeError(EadError):
    """``ead serve`` cannot start as asked (an upstream that does not answer as the spec needs, a bad option)."""


class ServeRequestError(ServeError, ValueError):
    """A request to ``ead serve`` that it cannot serve; answered with an OpenAI-style error body.

    Attributes:
        status: the HTTP status of the answer (400, 404, 429, 503...).
        param: the request field at fault, when one is.
        code: a short machine-readable code (``"model_not_found"``...), when one applies.
        kind: the OpenAI error ``type`` (``"invalid_request_error"``...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind
