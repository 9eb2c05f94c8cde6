"""The policy contract: what a switching policy is, and the data it sees at each step.

A policy is one object used unchanged in replay, tests and production. It is *pure*: its state is
a dict of arrays with a leading lane dimension, passed in and returned, never hidden on ``self``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from ead_sdk.arrays import Array, as_namespace
from ead_sdk.errors import ModelCountError, ParameterError, SpecError, SpecVersionError
from ead_sdk.escalation import ESCALATIONS, Escalation, EscalationRule, rule
from ead_sdk.params import Param, json_value, lane_value, validate_params
from ead_sdk.signal_spec import SignalSpec

State = dict[str, Array]
"""A policy's state: arrays whose leading dimension is the lane count."""

Routes = Array
"""Integer model indices per lane: 0 is the smallest model, ``M - 1`` the largest."""


@dataclass(frozen=True)
class Step:
    """What a policy sees about the token just drawn, for each of the ``n`` lanes.

    Attributes:
        entropy: ``(n,)`` entropy in nats of the distribution the token was drawn from: the
            exact entropy, or its estimate from the top-k when the policy's ``signal`` says so.
        model: ``(n,)`` index of the model that produced that distribution.
        index: ``(n,)`` position of the token among the generated ones (0 = first).
        live: ``(n,)`` bool; ``False`` for lanes that have finished (their state must not change).
        logprobs: optional ``(n, k)`` log-probabilities of that distribution: the full vocabulary
            (``token_ids is None``) or its top-k, sorted in decreasing order.
        token_ids: optional ``(n, k)`` vocabulary ids of ``logprobs`` when they are a top-k.
        token: optional ``(n,)`` the token id that was drawn.
        vocab_size: the full vocabulary size, when known.
        future: replay-only look-ahead (e.g. ``{"disagree": (n,) bool}`` for the next position),
            ``None`` in live decoding; only oracle baselines read it.
    """

    entropy: Array
    model: Array
    index: Array
    live: Array
    logprobs: Array | None = None
    token_ids: Array | None = None
    token: Array | None = None
    vocab_size: int | None = None
    future: Mapping[str, Array] | None = None

    @property
    def n(self) -> int:
        """Number of lanes."""
        return int(self.entropy.shape[0])


class Policy(ABC):
    """A token-level switching policy.

    Subclasses declare ``name``, ``version``, ``parameters`` (a tuple of `Param`) and
    ``max_models``, and implement `init_state` and `decide`. The constructor validates every
    parameter, so a policy object always holds a legal configuration.

    Args:
        escalation: ``"next"`` (a switch to a larger model takes effect from the next token),
            ``"retry"`` (the larger model also re-emits the token that triggered the switch) or
            ``"retry_token"`` (the larger model re-emits only that token; the next position is
            computed by the model that escalated, as in a per-token fallback).
        initial_model: the model every lane starts on (default 0, the smallest).
        signal: what `Step.entropy` holds, the signal the policy's thresholds are calibrated on:
            the exact entropy (``None``, ``"entropy"`` or ``SignalSpec()``, the default) or the
            estimate from the top-k log-probabilities (``SignalSpec.topk(20)`` or
            ``{"kind": "topk_entropy", "k": 20}``); see `ead_sdk.SignalSpec`.
        **params: the policy's declared parameters; numeric ones may be per-lane arrays.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    parameters: ClassVar[tuple[Param, ...]] = ()
    max_models: ClassVar[int | None] = 2
    """Largest model ladder the policy can route over (``None``: any size)."""
    replay_only: ClassVar[bool] = False
    """True for policies that read `Step.future` and so cannot run live."""

    def __init__(
        self,
        *,
        escalation: Escalation = "next",
        initial_model: int = 0,
        signal: SignalSpec | str | Mapping[str, Any] | None = None,
        **params: Any,
    ):
        label = getattr(type(self), "name", type(self).__name__)
        try:
            self.signal: SignalSpec = SignalSpec.from_json(signal)
        except SpecError as exc:
            raise SpecError(f"policy {label!r}: {exc}") from None
        if escalation not in ESCALATIONS:
            raise ParameterError(f"policy {label!r}: escalation must be one of {list(ESCALATIONS)}, got {escalation!r}")
        if isinstance(initial_model, bool) or not isinstance(initial_model, int) or initial_model < 0:
            raise ParameterError(f"policy {label!r}: initial_model must be an integer >= 0, got {initial_model!r}")
        self.escalation: Escalation = escalation
        self.initial_model = initial_model
        self._params = validate_params(label, type(self).parameters, params)
        self.configure()

    # -- configuration --------------------------------------------------------------------
    @property
    def escalation_rule(self) -> EscalationRule:
        """The `EscalationRule` of this policy's escalation mode (who emits, where the lane goes)."""
        return rule(self.escalation)

    @property
    def params(self) -> Mapping[str, Any]:
        """The validated parameter values (read-only)."""
        return MappingProxyType(self._params)

    def configure(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Finish building the policy from its validated parameters (called once by the constructor).

        Check relations between parameters (e.g. ``upper > lower``; raise `ParameterError`) and
        derive what the configuration implies (e.g. a nested policy built from a spec).
        """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "validate" in cls.__dict__:  # the hook's old name: it would never be called
            raise TypeError(f"{cls.__qualname__}.validate(): the hook is called configure() now; rename it")

    def num_rungs(self) -> int | None:
        """How many models the configuration implies (e.g. thresholds + 1); ``None`` if any."""
        return None

    def check_models(self, num_models: int) -> None:
        """Refuse a model count the policy (or its configuration) cannot route over."""
        if num_models < 1:
            raise ModelCountError(f"policy {self.name!r}: need at least one model, got {num_models}")
        if self.max_models is not None and num_models > self.max_models:
            raise ModelCountError(
                f"policy {self.name!r} routes between at most {self.max_models} models, got {num_models}"
            )
        rungs = self.num_rungs()
        if rungs is not None and rungs != num_models:
            raise ModelCountError(f"policy {self.name!r} is configured for {rungs} models, got {num_models}")
        if self.initial_model >= num_models:
            raise ModelCountError(
                f"policy {self.name!r}: initial_model {self.initial_model} is not one of {num_models} models"
            )

    def lane_params(self, n: int, xp: Any, device: Any = None) -> State:
        """Every numeric parameter as an ``(n, ...)`` array, ready to live in the state.

        Keeping parameters in the state means selecting or concatenating lanes carries each
        lane's own configuration along, and a parameter sweep is a single batched run.
        """
        xp = as_namespace(xp)
        decl = {p.name: p for p in self.parameters}
        return {
            name: lane_value(value, n, xp, kind=decl[name].kind, device=device, name=name)
            for name, value in self._params.items()
            if decl[name].kind in ("float", "int", "bool") and value is not None
        }

    # -- the contract ---------------------------------------------------------------------
    @abstractmethod
    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        """The state of ``n`` fresh lanes, as arrays of namespace ``xp`` on ``device``."""

    @abstractmethod
    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        """The model for each lane's next token, and the new state.

        Must not mutate ``state``, must leave lanes with ``step.live == False`` unchanged, and
        must not synchronise with the host (no ``.item()``, no Python branching on values).
        """

    # -- specs ----------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The JSON-able spec that `ead_sdk.load_policy` turns back into an equal policy."""
        return {
            "policy": self.name,
            "version": self.version,
            "params": {k: json_value(v) for k, v in self._params.items()},
            "escalation": self.escalation,
            "initial_model": self.initial_model,
            "signal": self.signal.as_json(),
        }

    @classmethod
    def upgrade_params(cls, version: int, params: dict[str, Any]) -> dict[str, Any]:
        """Rewrite the params of an older spec ``version`` into the current one.

        The default reads only the current version; a plugin that changes its parameters
        bumps ``version`` and overrides this to keep old specs loading.
        """
        if version != cls.version:
            raise SpecVersionError(
                f"policy {cls.name!r}: spec version {version} cannot be read by the installed "
                f"plugin, which reads version {cls.version}"
            )
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={json_value(v)!r}" for k, v in self._params.items())
        extra = "" if self.escalation == "next" else f", escalation={self.escalation!r}"
        extra += "" if self.signal.exact else f", signal={self.signal.as_json()!r}"
        return f"{type(self).__name__}({args}{extra})"
