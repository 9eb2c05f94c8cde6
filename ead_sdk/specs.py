"""Policy specs: JSON in, policy out, through the plugin registry. A spec never runs code."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk import strict_json
from ead_sdk.atomic_write import atomic_path
from ead_sdk.errors import ParameterError, SpecError, SpecVersionError, UnknownPolicyError
from ead_sdk.interface import Policy
from ead_sdk.registry import PolicyRegistry, default_registry

SPEC_KEYS = ("policy", "version", "params", "escalation", "initial_model", "signal")
_POLICY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _spec_folder(spec_or_path: Mapping[str, Any] | str | os.PathLike[str]) -> Path:
    """The folder that relative files named in a spec are read from: the spec file's, else the cwd."""
    if isinstance(spec_or_path, (str, os.PathLike)) and os.path.isfile(spec_or_path):
        return Path(spec_or_path).resolve().parent
    return Path.cwd()


def _read(spec_or_path: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(spec_or_path, Mapping):
        return dict(spec_or_path)
    if not isinstance(spec_or_path, (str, os.PathLike)) or isinstance(os.fspath(spec_or_path), bytes):
        raise SpecError(
            f"a policy spec is a dict, a JSON string, a policy name or a path; got {type(spec_or_path).__name__}"
        )
    text = os.fspath(spec_or_path)
    if text.lstrip().startswith(("{", "[")):
        source, raw = "<string>", text
    elif _POLICY_NAME.fullmatch(text) and not isinstance(spec_or_path, os.PathLike):
        # A bare policy name, even if a file of that name lies in the working directory: a
        # stray file must never change which policy runs. Spell a file ./name or name.json.
        return {"policy": text}
    elif not os.path.exists(text):
        raise SpecError(f"policy spec file {text!r} does not exist")
    elif os.path.isdir(text):
        raise SpecError(f"policy spec {text!r} is a directory, not a JSON file")
    else:
        try:
            source, raw = text, Path(text).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                f"policy spec file {text!r} is not UTF-8 JSON text ({exc.reason} at byte {exc.start})"
            ) from None
    try:
        return strict_json.loads_object(raw)
    except ValueError as exc:
        raise SpecError(f"policy spec {source!r}: {exc}") from None


def _from_json(policy: str, name: Any, value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) == {"per_lane"}:
        try:
            return np.asarray(value["per_lane"])
        except (ValueError, TypeError):  # ragged rows, or values numpy cannot hold in one array
            raise ParameterError(
                f"policy {policy!r}: parameter {name!r}: per_lane must be a list of numbers (or of equal-length "
                "lists of numbers, one per rung)"
            ) from None
    return value


MAX_NESTING = 16
"""The deepest chain of policies inside policies (``cost_budget``'s ``inner``) a spec may hold."""
_nesting = threading.local()


def load_policy(
    spec_or_path: Mapping[str, Any] | str | os.PathLike[str], registry: PolicyRegistry | None = None
) -> Policy:
    """Build a policy from its spec: a dict, a JSON string, a JSON file, or a bare policy name.

    Raises:
        UnknownPolicyError: no installed plugin provides the named policy.
        ParameterError: an unknown, missing, mistyped or out-of-range parameter.
        SpecVersionError: a spec version the installed plugin cannot read.
        SpecError: anything else malformed.
    """
    depth = getattr(_nesting, "depth", 0)
    if depth >= MAX_NESTING:
        raise SpecError(f"policy spec nests policies more than {MAX_NESTING} deep (through 'inner')")
    _nesting.depth = depth + 1
    try:
        return _load(spec_or_path, registry)
    finally:
        _nesting.depth = depth


def _load(spec_or_path: Mapping[str, Any] | str | os.PathLike[str], registry: PolicyRegistry | None) -> Policy:
    spec = _read(spec_or_path)
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"policy spec has unknown key(s) {unknown}; allowed: {list(SPEC_KEYS)}")
    name = spec.get("policy")
    if not isinstance(name, str):
        raise SpecError(f"policy spec needs a 'policy' name (a string), got {name!r}")
    try:
        info = (registry or default_registry()).get(name)
    except UnknownPolicyError as exc:
        if isinstance(spec_or_path, str) and spec == {"policy": spec_or_path} and os.path.isfile(spec_or_path):
            raise UnknownPolicyError(
                f"{exc} (a file {spec_or_path!r} exists: pass ./{spec_or_path} to read it)"
            ) from None
        raise
    cls = info.cls
    version = spec.get("version", cls.version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecVersionError(f"policy {name!r}: spec version must be an integer >= 1, got {version!r}")
    if version > cls.version:
        raise SpecVersionError(
            f"policy {name!r}: spec version {version} is newer than the installed plugin "
            f"({info.distribution} {info.distribution_version or ''}) reads (version {cls.version}); upgrade it"
        )
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise ParameterError(f"policy {name!r}: 'params' must be an object, got {type(params).__name__}")
    odd = [k for k in params if not isinstance(k, str)]
    if odd:
        raise ParameterError(f"policy {name!r}: parameter names must be strings, got {odd[0]!r:.40}")
    params = {k: _from_json(name, k, v) for k, v in params.items()}
    if version != cls.version:
        params = cls.upgrade_params(version, dict(params))
    resolve = getattr(cls, "resolve_spec_paths", None)  # e.g. a learned policy's weights file
    if resolve is not None:
        params = resolve(dict(params), _spec_folder(spec_or_path))
    # initial_model is passed only when the spec names it: a policy may have its own default.
    extra = {"initial_model": spec["initial_model"]} if "initial_model" in spec else {}
    # A spec without a signal predates the key: it was calibrated on the exact entropy.
    signal = spec.get("signal", "entropy")
    return cls(escalation=spec.get("escalation", "next"), signal=signal, **extra, **params)


def save_policy(policy: Policy, path: str | os.PathLike[str]) -> Path:
    """Write ``policy.spec()`` as JSON, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(policy.spec(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def as_policy(policy: Policy | Mapping[str, Any] | str | os.PathLike[str]) -> Policy:
    """The policy a spec, a name or a spec file builds; a policy object is returned as it is.

    A policy object is used as given, registered or not; only a spec goes through the registry.
    """
    if isinstance(policy, (Mapping, str, os.PathLike)):
        return load_policy(policy)
    return policy  # a Policy, or an object that quacks like one (checked where it is used)
