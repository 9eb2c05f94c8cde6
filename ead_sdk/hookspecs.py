"""The plugin hooks (pluggy): what a plugin package implements to provide policies.

A plugin module declares, with the ``ead_sdk`` entry-point group in its packaging metadata::

    from ead_sdk import hookimpl

    @hookimpl
    def register_policies(register):
        register(MyPolicy)
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "ead_sdk"
"""The pluggy project name, which is also the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_policies(register: Callable[[type], None]) -> None:
    """Call ``register(PolicyClass)`` once for each policy the plugin provides."""
