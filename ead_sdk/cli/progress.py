"""Progress that shows when output is not a terminal: one line per task start, step of 10%, and end.

Rich's live bars only draw on a terminal; piped to a file or a CI log they appear all at once
when the command ends. `LineProgress` offers the part of `rich.progress.Progress`'s interface the
commands use and prints plain, flushed lines to stderr instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """``add_task`` / ``advance`` / ``update`` printing a line at each tenth of a task, flushed."""

    def __init__(self, stream: TextIO | None = None, disable: bool = False):
        self.stream = stream or sys.stderr
        self.disable = disable
        self.tasks: dict[int, dict[str, Any]] = {}
        self.start = time.perf_counter()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _say(self, text: str) -> None:
        if not self.disable:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {text}", file=self.stream, flush=True)

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        job = len(self.tasks)
        self.tasks[job] = {"description": description, "total": total, "completed": 0.0, "said": -1}
        self._say(f"{description}: started" + (f" ({total:g} to do)" if total else ""))
        return job

    def advance(self, job: int, advance: float = 1) -> None:
        self.update(job, completed=self.tasks[job]["completed"] + advance)

    def update(self, job: int, *, completed: float | None = None, total: float | None = None, **_: Any) -> None:
        task = self.tasks[job]
        if total is not None:
            task["total"] = total
        if completed is None:
            return
        task["completed"] = completed
        if not task["total"]:
            return
        tenth = int(10 * completed / task["total"])
        if tenth > task["said"]:
            task["said"] = tenth
            word = "done" if completed >= task["total"] else f"{10 * tenth}%"
            self._say(f"{task['description']}: {completed:g}/{task['total']:g} {word}")
