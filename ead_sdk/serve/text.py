"""Token ids to text as they stream: incremental detokenisation and stop strings.

A token may end inside a multi-byte character (the tokenizer decodes it to U+FFFD until the next
token completes it), and a tokenizer may render a token differently after a word boundary. So the
text is decoded over a short window that starts before the new tokens, and only the part past
what was already read is handed on. Text that could still be the start of a stop string is held
back until it cannot; the text ends just before the first stop string, which is never sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROMPT_CONTEXT = 5
"""Prompt tokens placed before the first generated token, so it decodes as it would in context."""


class IncrementalText:
    """Turns a lane's tokens, one at a time, into text deltas that are final when sent.

    Args:
        tokenizer: a Hugging Face tokenizer (``decode(ids, skip_special_tokens=True)``).
        prompt: the lane's prompt token ids (the last few give the first token its context).
        stop: stop strings; `stopped` turns true when one appears.
    """

    def __init__(self, tokenizer: Any, prompt: Sequence[int], stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt[-PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""  # all the text decoded so far (cut at a stop string)
        self.sent = 0  # how much of `text` was handed on
        self.stopped = False

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _read_new(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character, or a token with no text (EOS)
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def push(self, token: int) -> str:
        """Add ``token``; return the text that is now final (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(int(token))
        self.text += self._read_new()
        return self._release(final=False)

    def finish(self) -> str:
        """The lane ended: return the text still held back (an incomplete character is dropped)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self._stop and not self.stopped:
            start = max(0, self.sent - self._hold)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
        end = len(self.text)
        if not final and not self.stopped and self._stop:
            end -= self._partial_stop()
        delta = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return delta

    def _partial_stop(self) -> int:
        """The length of the longest end of `text` that starts some stop string (held back)."""
        for n in range(min(self._hold, len(self.text) - self.sent), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0
