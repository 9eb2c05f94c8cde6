"""Files published atomically: written under a temporary name beside the target, then renamed.

A reader never sees half a spec or half a trace, and a crash leaves the old file in place.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_umask_lock = threading.Lock()


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the process umask (``mkstemp`` gives 0600)."""
    with _umask_lock:  # reading the umask means setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_path(dest: Path) -> Path:
    """A fresh temporary path beside ``dest`` (same file system, so the rename is atomic).

    It carries the mode a plain new file would have, so the published file is as readable as
    one written directly (a spec or trace is often read by another user or service).
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:  # name the file the user asked for, not our temporary one
        raise OSError(exc.errno, exc.strerror, str(dest)) from None
    try:
        os.fchmod(fd, default_file_mode())
    finally:
        os.close(fd)
    return Path(tmp)
