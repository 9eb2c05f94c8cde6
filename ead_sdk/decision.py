"""Calling a policy's ``decide`` with its contract checked: what comes back is routes and state, or a named error.

The decode loop and replay both call `decide_checked`, so a policy that raises, returns routes
of the wrong shape or a non-integer dtype (0.7 would be floored to model 0), or drops or adds a
state key is refused with the policy's name and the step, never a raw library traceback. The
checks read only shapes, dtypes and keys: no host sync.
"""

from __future__ import annotations

from typing import Any

from ead_sdk.errors import EadError, PolicyError
from ead_sdk.interface import Policy, Routes, State, Step


def is_integer_dtype(dtype: Any) -> bool:
    """Whether an array dtype (numpy, torch, any array-API namespace) is a signed or unsigned integer."""
    name = str(dtype).rsplit(".", 1)[-1]
    return name.startswith(("int", "uint"))


def decide_checked(policy: Policy, state: State, step: Step, n: int, position: int) -> tuple[Routes, State]:
    """``policy.decide(state, step)`` for ``n`` lanes at step ``position``, its output checked.

    Raises:
        PolicyError: ``decide`` raised, or returned something other than ``(routes, state)`` with
            integer routes of shape ``(n,)`` and a state with the same keys, each ``n`` rows.
    """
    where = f"policy {policy.name!r} at step {position}"
    try:
        out = policy.decide(state, step)
    except EadError as exc:  # the SDK's own error (a missing step field...): same class, the step added
        raise _with_step(exc, policy.name, position) from exc
    except Exception as exc:  # a bug in the policy: name it, keep the original as the cause
        raise PolicyError(f"{where}: decide raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, tuple) or len(out) != 2:
        raise PolicyError(f"{where}: decide must return (routes, state), got {type(out).__name__}")
    routes, new = out
    _check_routes(where, routes, n)
    _check_state(where, state, new, n)
    return routes, new


def _with_step(exc: EadError, name: str, position: int) -> EadError:
    """``exc`` re-made with the step in its message (and the policy, if it did not name it); its class kept."""
    text = str(exc)
    named = f"policy {name!r}" in text
    msg = f"{text} (at step {position})" if named else f"policy {name!r} at step {position}: {text}"
    try:
        return type(exc)(msg)
    except Exception:  # noqa: BLE001 - an error class with another constructor: keep it as it is
        return exc


def init_checked(policy: Policy, n: int, xp: Any, device: Any = None) -> State:
    """``policy.init_state(n, xp, device)``, checked to be a dict of arrays with ``n`` rows each.

    Raises:
        PolicyError: ``init_state`` raised, or returned something else (naming the policy).
    """
    where = f"policy {policy.name!r} (init_state)"
    try:
        state = policy.init_state(n, xp, device) if device is not None else policy.init_state(n, xp)
    except EadError:
        raise
    except Exception as exc:  # a bug in the policy: name it, keep the original as the cause
        raise PolicyError(f"{where}: raised {type(exc).__name__}: {exc}") from exc
    _check_state(where, state if isinstance(state, dict) else {}, state, n)
    return state


def _check_routes(where: str, routes: Any, n: int) -> None:
    shape, dtype = getattr(routes, "shape", None), getattr(routes, "dtype", None)
    if shape is None or dtype is None:
        raise PolicyError(f"{where}: routes must be an integer array of shape ({n},), got {type(routes).__name__}")
    if tuple(shape) != (n,):
        raise PolicyError(f"{where}: routes have shape {tuple(shape)}, expected ({n},) (one model index per lane)")
    if not is_integer_dtype(dtype):
        raise PolicyError(
            f"{where}: routes must be model indices of an integer dtype, got {dtype} (a float would be floored)"
        )


def _check_state(where: str, old: State, new: Any, n: int) -> None:
    if not isinstance(new, dict):
        raise PolicyError(f"{where}: the state must be a dict of arrays, got {type(new).__name__}")
    if new.keys() != old.keys():
        dropped, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        what = "; ".join(
            part for part in (f"dropped {dropped}" if dropped else "", f"added {added}" if added else "") if part
        )
        raise PolicyError(f"{where}: the state must keep its keys: {what}")
    for key, value in new.items():
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) == 0 or shape[0] != n:
            got = "no array" if shape is None else f"shape {tuple(shape)}"
            raise PolicyError(f"{where}: state {key!r} must have {n} rows (one per lane), got {got}")
