"""Server-sent events exactly as the OpenAI API streams them: ``data: <json>`` frames, then ``data: [DONE]``."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers that keep proxies from buffering the stream."""

MEDIA_TYPE = "text/event-stream"


def event(data: Any) -> bytes:
    """One SSE frame holding ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"
