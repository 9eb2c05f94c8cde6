"""Lazily loaded package exports: a name's module is imported on the name's first use.

Packages whose public names need an optional extra (torch, transformers, hypothesis) list them
here, so importing the package stays cheap and works without the extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package`` serving ``where`` (name -> module path).

    Use as ``__getattr__, __dir__ = lazy_exports(__name__, {...})``; a loaded name is cached in
    the package's namespace, so the module is looked up once.
    """
    namespace = import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
