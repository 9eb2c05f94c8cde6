"""Plugin discovery (pluggy): which policies are installed, and who provides each.

Every policy, built-in or third-party, arrives the same way: an entry point in the ``ead_sdk``
group names a module whose ``register_policies(register)`` hook calls ``register(PolicyClass)``.
A plugin that fails to import or validate is recorded as a `PluginProblem` and warned about;
the others still load.

Environment:
    ``EAD_SDK_PLUGINS``: comma-separated allow-list of third-party distributions (``dist``, any
    spelling PEP 503 normalises alike) or single entry points of one (``dist:entry-point``);
    only those load (the built-ins always do: entry points whose module is inside ``ead_sdk``).
    ``EAD_SDK_DISABLE_PLUGINS=1``: load nothing but the built-ins.

A distribution that calls itself ``ead-sdk`` but points outside ``ead_sdk`` is reported and never
loaded, whatever the switches say.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ead_sdk import hookspecs
from ead_sdk.errors import DuplicatePolicyError, PluginError, PluginWarning, UnknownPolicyError
from ead_sdk.interface import Policy

BUILTIN_DISTRIBUTION = "ead-sdk"
ALLOW_ENV = "EAD_SDK_PLUGINS"


def _canonical(name: str) -> str:
    """PEP 503 name normalisation (``Ead_Policy.X`` == ``ead-policy-x``), keeping a ``:entry-point`` as is."""
    dist, sep, ep = name.strip().partition(":")
    return re.sub(r"[-_.]+", "-", dist).lower() + sep + ep


DISABLE_ENV = "EAD_SDK_DISABLE_PLUGINS"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class PolicyInfo:
    """A discovered policy: its class and where it came from."""

    name: str
    cls: type[Policy]
    distribution: str
    distribution_version: str | None
    plugin: str
    version: int
    max_models: int | None
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``ead policies --json``)."""
        return {
            "name": self.name,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "distribution": self.distribution,
            "distribution_version": self.distribution_version,
            "plugin": self.plugin,
            "version": self.version,
            "max_models": self.max_models,
            "replay_only": bool(self.cls.replay_only),
            "summary": self.summary,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class PluginProblem:
    """A plugin (or one policy of it) that was not loaded, and why."""

    plugin: str
    distribution: str | None
    stage: str  # "import", "validate", "register" or "duplicate"
    message: str

    def __str__(self) -> str:
        dist = f" (distribution {self.distribution!r})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist} failed to {self.stage}: {self.message}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class PolicyRegistry:
    """A pluggy plugin manager and the policies its plugins registered.

    Args:
        entry_points: load the installed ``ead_sdk`` entry points now.
        allow: third-party allow-list (default: from ``EAD_SDK_PLUGINS``; ``None`` = all).
        third_party: load third-party plugins (default: unless ``EAD_SDK_DISABLE_PLUGINS``).
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        allow: set[str] | None = None,
        third_party: bool | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.policies: dict[str, PolicyInfo] = {}
        self.problems: list[PluginProblem] = []
        self.skipped: list[str] = []
        if allow is None and os.environ.get(ALLOW_ENV, "").strip():
            allow = {a.strip() for a in os.environ[ALLOW_ENV].split(",") if a.strip()}
        self.allow = allow
        self.third_party = (not _truthy(os.environ.get(DISABLE_ENV))) if third_party is None else third_party
        if entry_points:
            self.load_entry_points()

    # -- loading --------------------------------------------------------------------------
    def _allowed(self, ep_name: str, dist: str | None) -> bool:
        if not self.third_party:
            return False
        if self.allow is None:
            return True
        # An entry names its distribution, not just an entry point: otherwise any installed
        # package could satisfy the list by naming its entry point after an allowed one.
        if dist is None:
            return False
        allowed = {_canonical(a) for a in self.allow}
        return _canonical(dist) in allowed or f"{_canonical(dist)}:{ep_name}" in allowed

    def load_entry_points(self) -> None:
        """Import and register every allowed entry point of the ``ead_sdk`` group.

        Built-ins are the entry points whose module lies inside this package (``ead_sdk.*``);
        they always load, first, whatever distribution lists them. Any other entry point of a
        distribution that calls itself ``ead-sdk`` is an impostor: reported, never loaded.
        """
        seen: set[tuple[str, str]] = set()
        for ep, dist, dist_version in sorted(_group_entry_points(), key=_load_order):
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            builtin = _is_builtin(ep)
            if not builtin and dist is not None and _canonical(dist) == BUILTIN_DISTRIBUTION:
                self._problem(
                    ep.name,
                    dist,
                    "validate",
                    f"distribution {dist!r} {dist_version or ''} calls itself the SDK but its entry point "
                    f"{ep.value!r} is not part of ead_sdk; not loaded",
                )
                continue
            if not builtin and not self._allowed(ep.name, dist):
                self.skipped.append(f"{dist}:{ep.name}")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                self._problem(ep.name, dist, "import", f"{type(exc).__name__}: {exc} (entry point {ep.value!r})")
                continue
            label = BUILTIN_DISTRIBUTION if builtin else dist
            version = _sdk_version() if builtin else dist_version
            self.add_plugin(plugin, name=ep.name, distribution=label, distribution_version=version)

    def add_plugin(
        self,
        plugin: Any,
        *,
        name: str | None = None,
        distribution: str | None = None,
        distribution_version: str | None = None,
    ) -> bool:
        """Register a plugin object or module in-process and collect its policies.

        Returns ``False`` (and records a `PluginProblem`) when it fails to validate.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        label = distribution or name
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self._problem(name, distribution, "validate", str(exc))
            return False
        try:  # a hook implementation with a misspelled name
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            self._problem(name, distribution, "validate", str(exc))
            return False
        impls = [i for i in self.pm.hook.register_policies.get_hookimpls() if i.plugin is plugin]
        for impl in impls:
            try:
                impl.function(register=self._register_callback(name, label, distribution_version))
            except Exception as exc:
                self._problem(name, distribution, "register", f"{type(exc).__name__}: {exc}")
        return True

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and forget its policies (for tests that add one in-process)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.policies = {k: v for k, v in self.policies.items() if v.plugin != name}

    def _register_callback(self, plugin: str, dist: str, dist_version: str | None) -> Callable[[type], None]:
        def register(cls: type) -> None:
            if not (inspect.isclass(cls) and issubclass(cls, Policy)):
                raise PluginError(f"register() takes a Policy subclass, got {cls!r}", plugin=plugin)
            if inspect.isabstract(cls):
                missing = sorted(getattr(cls, "__abstractmethods__", ()))
                raise PluginError(f"{cls.__qualname__} does not implement {missing}", plugin=plugin)
            pname = getattr(cls, "name", None)
            if not isinstance(pname, str) or not _NAME.match(pname):
                raise PluginError(
                    f"{cls.__qualname__}.name must be an identifier-like string, got {pname!r}", plugin=plugin
                )
            if not isinstance(cls.version, int) or cls.version < 1:
                raise PluginError(
                    f"{cls.__qualname__}.version must be an integer >= 1, got {cls.version!r}", plugin=plugin
                )
            if pname in self.policies:
                first = self.policies[pname]
                msg = (
                    f"policy {pname!r} is provided by both {first.distribution!r} "
                    f"(plugin {first.plugin!r}) and {dist!r} (plugin {plugin!r}); keeping the first"
                )
                self._problem(plugin, dist, "duplicate", msg)
                return
            doc = (inspect.getdoc(cls) or "").strip().splitlines()
            self.policies[pname] = PolicyInfo(
                name=pname,
                cls=cls,
                distribution=dist,
                distribution_version=dist_version,
                plugin=plugin,
                version=cls.version,
                max_models=cls.max_models,
                parameters={p.name: p.schema() for p in cls.parameters},
                summary=doc[0] if doc else "",
            )

        return register

    def _problem(self, plugin: str, dist: str | None, stage: str, message: str) -> None:
        problem = PluginProblem(plugin, dist, stage, message)
        self.problems.append(problem)
        warnings.warn(str(problem), PluginWarning, stacklevel=3)

    # -- queries --------------------------------------------------------------------------
    def get(self, name: str) -> PolicyInfo:
        """The info of policy ``name``; `UnknownPolicyError` lists what is installed."""
        try:
            return self.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.policies)) or "none"
            hint = ""
            if self.problems:
                hint = "; plugins that failed to load: " + "; ".join(str(p) for p in self.problems)
            raise UnknownPolicyError(f"unknown policy {name!r}; installed policies: {known}{hint}") from None

    def check(self) -> None:
        """Raise `PluginError` listing every problem (strict mode for CI of a plugin package)."""
        if self.problems:
            cls = DuplicatePolicyError if all(p.stage == "duplicate" for p in self.problems) else PluginError
            raise cls("; ".join(str(p) for p in self.problems), plugin=[p.plugin for p in self.problems])


def _group_entry_points() -> list[tuple[md.EntryPoint, str | None, str | None]]:
    """``(entry point, distribution name, version)`` of the ``ead_sdk`` group in every distribution.

    ``importlib.metadata.entry_points()`` keeps one distribution per name (the first on
    ``sys.path``), so a second distribution calling itself ``ead-sdk`` would hide the real one;
    every distribution is read here instead.
    """
    out = []
    for dist in md.distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
            eps = [ep for ep in dist.entry_points if ep.group == hookspecs.PROJECT]
        except Exception:  # noqa: BLE001 - a broken dist-info must not stop discovery
            continue
        out += [(ep, name, version) for ep in eps]
    return out


def _is_builtin(ep: md.EntryPoint) -> bool:
    """An entry point whose module is this package or inside it."""
    module = ep.value.partition(":")[0].strip()
    return module == "ead_sdk" or module.startswith("ead_sdk.")


def _load_order(item: tuple[md.EntryPoint, str | None, str | None]) -> tuple[int, str, str]:
    ep, dist, _ = item
    return (0 if _is_builtin(ep) else 1, dist or "", ep.name)


def _sdk_version() -> str | None:
    from ead_sdk import __version__

    return __version__


_default: PolicyRegistry | None = None


def default_registry() -> PolicyRegistry:
    """The process-wide registry, built from entry points on first use."""
    global _default
    if _default is None:
        _default = PolicyRegistry()
    return _default


def reload_plugins() -> PolicyRegistry:
    """Forget the process-wide registry and discover plugins again (after installing one)."""
    global _default
    _default = None
    return default_registry()


def installed_policies() -> dict[str, PolicyInfo]:
    """A dict of the installed policies by name, each with its class, distribution and parameter schema."""
    return dict(default_registry().policies)


def plugin_problems() -> list[PluginProblem]:
    """Plugins that failed to import, validate or register in the process-wide registry."""
    return list(default_registry().problems)
