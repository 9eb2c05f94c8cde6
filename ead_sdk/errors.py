"""The SDK's exception hierarchy: every error raised on purpose derives from `EadError`."""

from __future__ import annotations


class EadError(Exception):
    """Root of every error the SDK raises on purpose."""


class SignalError(EadError, ValueError):
    """Logits or log-probabilities that no distribution can come from (NaN, +inf, all -inf)."""


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


class PluginError(EadError):
    """A plugin failed to import, to validate, or to register its policies."""


class DuplicatePolicyError(PluginError):
    """Two plugins register a policy under the same name."""


class TraceError(EadError, ValueError):
    """A trace file or dataset that is malformed, truncated, foreign or from a newer format."""


class BackendError(EadError):
    """A model backend that cannot serve the request (mismatched tokenizers, bad prompts...)."""


class RouterTrainingError(EadError, ValueError):
    """Traces that cannot train or label a learned router (k too small, too few sequences...)."""


class WeightsIntegrityError(SpecError):
    """A learned policy's weights file is missing, unreadable, or does not match its SHA-256."""


class PolicyError(EadError):
    """A policy's ``decide`` failed, or returned routes or state that break the contract."""
