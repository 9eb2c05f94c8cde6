"""Declared policy parameters: validation, JSON schema, and per-lane broadcasting.

A value is *global* when it is a Python scalar (or, for a ladder parameter, a Python list of
scalars: one threshold per rung) and *per lane* when it is an array (numpy or torch) whose
leading dimension is the number of lanes. Per-lane values are what make a sweep one batched run.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ead_sdk.arrays import Array, default_float, is_torch, to_numpy
from ead_sdk.errors import ParameterError

Kind = Literal["float", "int", "bool", "str", "spec"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def is_lane_array(value: Any) -> bool:
    """True for a per-lane value: an array (not a Python scalar, list or tuple)."""
    return hasattr(value, "ndim") and hasattr(value, "shape") and getattr(value, "ndim", 0) > 0


@dataclass(frozen=True)
class Param:
    """One declared policy parameter.

    Attributes:
        name: the parameter's name in specs and constructors.
        kind: ``"float"``, ``"int"``, ``"bool"``, ``"str"`` or ``"spec"`` (a nested policy spec).
        default: the default value, or `REQUIRED`.
        low, high: inclusive bounds (``low_open``/``high_open`` make them exclusive).
        choices: the allowed values of a ``"str"`` parameter.
        ladder: the value may be a list of increasing numbers, one per rung of a model ladder.
        lane: the value may be a per-lane array (numeric kinds only).
        doc: one line for ``ead policies`` and the docs.
    """

    name: str
    kind: Kind = "float"
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    ladder: bool = False
    lane: bool = True
    doc: str = ""
    nullable: bool = field(default=False)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def schema(self) -> dict[str, Any]:
        """A JSON-able description (for ``installed_policies`` and ``ead policies --json``)."""
        out: dict[str, Any] = {"kind": self.kind, "doc": self.doc}
        if not self.required:
            out["default"] = self.default
        else:
            out["required"] = True
        for key in ("low", "high", "choices"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.low_open:
            out["low_open"] = True
        if self.high_open:
            out["high_open"] = True
        if self.ladder:
            out["ladder"] = True
        out["per_lane"] = self.lane and self.kind in ("float", "int", "bool")
        return out

    # -- validation -----------------------------------------------------------------------
    def _fail(self, policy: str, msg: str) -> ParameterError:
        return ParameterError(f"policy {policy!r}: parameter {self.name!r} {msg}")

    def _check_range(self, policy: str, values: np.ndarray) -> None:
        if values.size == 0:
            return
        if self.kind in ("float", "int") and not np.all(np.isfinite(values.astype(float))):
            raise self._fail(policy, f"must be finite, got {_show(values)}")
        lo, hi = self.low, self.high
        if lo is not None:
            bad = values <= lo if self.low_open else values < lo
            if np.any(bad):
                op = ">" if self.low_open else ">="
                raise self._fail(policy, f"must be {op} {lo}, got {values[bad].ravel()[0].item()!r}")
        if hi is not None:
            bad = values >= hi if self.high_open else values > hi
            if np.any(bad):
                op = "<" if self.high_open else "<="
                raise self._fail(policy, f"must be {op} {hi}, got {values[bad].ravel()[0].item()!r}")

    def _scalar(self, policy: str, value: Any) -> Any:
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise self._fail(policy, f"must be a bool, got {type(value).__name__} {_show(value)}")
            return bool(value)
        if kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise self._fail(policy, f"must be an integer, got {type(value).__name__} {_show(value)}")
            value = int(value)
            if not -(2**63) <= value < 2**63:  # lanes hold int64
                raise self._fail(policy, f"must fit in 64 bits, got {value}")
            self._check_range(policy, np.asarray([value]))
            return value
        if kind == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                raise self._fail(policy, f"must be a number, got {type(value).__name__} {_show(value)}")
            value = float(value)
            self._check_range(policy, np.asarray([value]))
            return value
        if kind == "str":
            if not isinstance(value, str):
                raise self._fail(policy, f"must be a string, got {type(value).__name__} {_show(value)}")
            if self.choices is not None and value not in self.choices:
                raise self._fail(policy, f"must be one of {list(self.choices)}, got {value!r}")
            return value
        if kind == "spec":
            if not isinstance(value, Mapping):
                raise self._fail(policy, f"must be a policy spec (a mapping), got {type(value).__name__}")
            return dict(value)
        raise self._fail(policy, f"has unknown kind {kind!r}")  # pragma: no cover - declaration bug

    def validate(self, policy: str, value: Any) -> Any:
        """Check ``value`` and return it normalised (Python scalars/lists, or the array as given)."""
        if value is None and self.nullable:
            return None
        if is_lane_array(value):
            if not self.lane or self.kind not in ("float", "int", "bool"):
                raise self._fail(policy, "cannot be given per lane (an array was passed)")
            host = to_numpy(value)
            expect = 2 if self.ladder and host.ndim == 2 else 1
            if host.ndim != expect:
                shape = "(lanes,) or (lanes, rungs)" if self.ladder else "(lanes,)"
                raise self._fail(policy, f"per-lane array must have shape {shape}, got {host.shape}")
            if self.kind == "bool" and host.dtype != np.bool_:
                raise self._fail(policy, f"per-lane array must be boolean, got {host.dtype}")
            if self.kind == "int" and not np.issubdtype(host.dtype, np.integer):
                raise self._fail(policy, f"per-lane array must hold integers, got {host.dtype}")
            numeric = np.issubdtype(host.dtype, np.floating) or np.issubdtype(host.dtype, np.integer)
            if self.kind == "float" and not numeric:
                raise self._fail(policy, f"per-lane array must be numeric, got {host.dtype}")
            if self.kind != "bool":
                self._check_range(policy, host)
            if host.ndim == 2:
                _check_increasing(self, policy, host)
            return value
        if isinstance(value, (list, tuple)):
            if not self.ladder:
                raise self._fail(policy, f"must be a single {self.kind}, got a list {_show(list(value))}")
            if len(value) == 0:
                raise self._fail(policy, "must not be an empty list")
            items = [self._scalar(policy, v) for v in value]
            _check_increasing(self, policy, np.asarray(items, dtype=float)[None, :])
            return items
        return self._scalar(policy, value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 8, 60, 60


def _show(value: Any) -> str:
    """A short repr for an error message: a 5M-value per-lane array or a deep spec stays a few dozen characters."""
    if isinstance(value, np.ndarray):
        head = _REPR.repr(value.ravel()[:8].tolist())
        return head if value.size <= 8 else f"{head[:-1]}, ...] ({value.size} values, shape {value.shape})"
    return _REPR.repr(value)


def _check_increasing(param: Param, policy: str, rows: np.ndarray) -> None:
    if rows.shape[-1] > 1 and np.any(np.diff(rows, axis=-1) <= 0):
        raise ParameterError(
            f"policy {policy!r}: parameter {param.name!r} must be strictly increasing along the ladder, "
            f"got {_show(rows)}"
        )


def validate_params(policy: str, declared: tuple[Param, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``given`` against ``declared``; fill defaults; refuse unknown or missing names."""
    known = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParameterError(f"policy {policy!r}: unknown parameter(s) {unknown}; known: {sorted(known) or 'none'}")
    out: dict[str, Any] = {}
    for p in declared:
        if p.name in given:
            out[p.name] = p.validate(policy, given[p.name])
        elif p.required:
            raise ParameterError(f"policy {policy!r}: parameter {p.name!r} is required")
        else:
            out[p.name] = p.default
    return out


def lane_value(value: Any, n: int, xp: Any, *, kind: Kind, device: Any = None, name: str = "") -> Array:
    """Broadcast a validated numeric parameter to a per-lane array of leading size ``n``."""
    dtype = {"bool": xp.bool, "int": xp.int64}.get(kind) or default_float(xp)
    if is_lane_array(value):
        if value.shape[0] != n:
            raise ParameterError(f"per-lane parameter {name!r} has {value.shape[0]} values for {n} lanes")
        if not (is_torch(value) and "torch" in xp.__name__):
            value = np.array(to_numpy(value))  # a writable copy: torch refuses read-only buffers
        return _asarray(xp, value, dtype, device)
    host = np.array(np.broadcast_to(np.asarray(value), (n, *np.shape(value))))  # writable copy
    return _asarray(xp, host, dtype, device)


def _asarray(xp: Any, value: Any, dtype: Any, device: Any) -> Array:
    return xp.asarray(value, dtype=dtype) if device is None else xp.asarray(value, dtype=dtype, device=device)


def json_value(value: Any) -> Any:
    """A JSON-able form of a parameter value (per-lane arrays become lists under ``per_lane``)."""
    if is_lane_array(value):
        return {"per_lane": to_numpy(value).tolist()}
    if isinstance(value, Mapping) and set(value) == {"per_lane"}:
        return dict(value)
    if isinstance(value, float) and math.isnan(value):  # pragma: no cover - refused earlier
        raise ParameterError("NaN is not a valid parameter value")
    return value
