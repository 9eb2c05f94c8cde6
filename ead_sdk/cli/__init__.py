"""The ``ead`` command line: policies, offline replay/sweep/calibrate, live record/generate/eval, demo, view.

Every command takes ``--help``; those that report figures take ``--json``. A user error (any
`ead_sdk.errors.EadError`, a missing file) prints one line to stderr and exits with status 1.
"""

from __future__ import annotations

from ead_sdk.cli import model_commands as _model_commands  # noqa: F401  (registers the commands that run models)
from ead_sdk.cli import offline as _offline  # noqa: F401  (registers the offline commands)
from ead_sdk.cli import router as _router  # noqa: F401  (registers train-router)
from ead_sdk.cli import serve as _serve  # noqa: F401  (registers ead serve)
from ead_sdk.cli import traces as _traces  # noqa: F401  (registers ead traces ...)
from ead_sdk.cli import view as _view  # noqa: F401  (registers ead view)
from ead_sdk.cli._app import app, main

__all__ = ["app", "main"]
