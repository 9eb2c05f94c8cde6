r"""The demo task: complete held-out lines of the Python standard library's own source code.

Every CPython installation ships its standard library as ``*.py`` source files, so the task
needs no download. This module builds it deterministically and with the standard library
plus numpy only (it never imports ``torch``):

* **Corpus.** The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, sorted by their
  POSIX relative path. Test suites, ``idlelib``, ``site-packages``, generated tables
  (``encodings``, ``pydoc_data``, ``_sysconfigdata*``), files over 300 kB and the modules that
  were removed between CPython 3.10 and 3.13 are skipped, so that the corpus is nearly the same
  on any CPython 3.10-3.13.
* **Split.** The 20 files in :data:`HELD_OUT_FILES` (present in every CPython 3.10-3.13) are
  held out for evaluation; every other selected file is training data.
* **Tokens.** Byte level: token id = byte value (0-255), plus ``EOS_ID = 256`` (end of a file,
  also the end-of-text token of the tokenizer) and ``PAD_ID = 257``. ``VOCAB_SIZE = 258``.
* **Evaluation prompts.** From each held-out file, every line whose text is non-blank and at
  most 100 bytes long is a candidate; its *context* is the longest run of whole preceding lines
  that fits in 200 bytes (at least two lines). The candidates are ordered by a SHA-1 of
  ``(file, line number)`` -- independent of any random number generator -- so
  ``load_eval_prompts(n)`` is a fixed, representative prefix of the full list. Two cuts:

  - ``cut="half"`` (the default): the prompt is the context plus the line's indentation and
    the first half (rounded down, in characters) of the rest of the line; the target is the
    remainder of the line. Like the usual line-level code-completion benchmarks, the prompt
    ends mid-line.
  - ``cut="line"``: the prompt ends at the line boundary and the target is the whole line.
    Much harder: both demo models get almost no line exactly right, so the default is
    ``"half"``, where the pair's gap shows in every score (see ``weights/results.json``).

* **Scores** (per prompt, checkable): the completion is cut after its first ``"\n"``.
  ``exact`` = 1.0 when it equals ``target + "\n"``; ``soft`` = the fraction of the bytes of
  ``target + "\n"`` matched before the first error (the newline counts, so running past the
  end of the line is an error too); ``similarity`` = ``difflib.SequenceMatcher`` ratio of the
  completed line (without the newline) to the target (the "edit similarity" of line-completion
  benchmarks).

Training data: :func:`training_tokens` (one flat ``uint16`` array: each file's bytes followed
by ``EOS_ID``) and :func:`iter_training_batches` (random windows drawn by a seeded
``numpy.random.Generator(PCG64(seed))``, so the data order is reproducible).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "VOCAB_SIZE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "HELD_OUT_FILES",
    "PROMPT_MAX_BYTES",
    "TARGET_MAX_BYTES",
    "EvalPrompt",
    "stdlib_dir",
    "corpus_files",
    "train_files",
    "eval_files",
    "encode",
    "decode",
    "training_tokens",
    "eval_tokens",
    "iter_training_batches",
    "load_eval_prompts",
    "completion_line",
    "exact_match",
    "soft_score",
    "similarity",
    "METRICS",
    "score_completion",
    "score_details",
]

EOS_ID = 256
PAD_ID = 257
VOCAB_SIZE = 258
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

PROMPT_MAX_BYTES = 200
TARGET_MAX_BYTES = 100
MIN_CONTEXT_LINES = 2
MAX_FILE_BYTES = 300_000

#: The files held out for evaluation (POSIX paths relative to the stdlib directory).
HELD_OUT_FILES: tuple[str, ...] = (
    "bisect.py",
    "colorsys.py",
    "copy.py",
    "fnmatch.py",
    "genericpath.py",
    "getopt.py",
    "glob.py",
    "graphlib.py",
    "html/parser.py",
    "json/decoder.py",
    "netrc.py",
    "numbers.py",
    "queue.py",
    "reprlib.py",
    "sched.py",
    "shlex.py",
    "stat.py",
    "string.py",
    "tabnanny.py",
    "textwrap.py",
)

# Directories (any path component) that are never part of the corpus.
_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "distutils",
        "ensurepip",
        "turtledemo",
        "encodings",
        "pydoc_data",
        "__pycache__",
        "__phello__",
    }
)
# Top-level modules removed between CPython 3.10 and 3.13 (PEP 594, PEP 632, imp, ...):
# skipped so that the corpus is about the same on every supported version.
_SKIP_MODULES = frozenset(
    {
        "aifc.py",
        "asynchat.py",
        "asyncore.py",
        "cgi.py",
        "cgitb.py",
        "chunk.py",
        "crypt.py",
        "imghdr.py",
        "imp.py",
        "mailcap.py",
        "nntplib.py",
        "pipes.py",
        "smtpd.py",
        "sndhdr.py",
        "sunau.py",
        "telnetlib.py",
        "uu.py",
        "xdrlib.py",
        "__hello__.py",
        "antigravity.py",
        "this.py",
    }
)


CUTS = ("half", "line")
METRICS = ("exact", "soft", "similarity")


@dataclass(frozen=True)
class EvalPrompt:
    r"""One held-out prompt, and the rest of its line that a completion must produce.

    ``prompt`` = the preceding source lines (each ending with ``"\n"``) followed by ``prefix``,
    the given start of the line; ``target`` = the rest of that line, without its newline. A
    correct completion is ``target + "\n"``.
    """

    id: str  # "<file>:<line_no>"
    file: str
    line_no: int  # 1-based line number of the completed line in ``file``
    prompt: str
    target: str
    prefix: str = ""  # the part of the line inside the prompt ("" with cut="line")


def stdlib_dir() -> str:
    """The directory of the running interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def _skip(rel: str) -> bool:
    parts = rel.split("/")
    if any(p in _SKIP_DIRS for p in parts[:-1]):
        return True
    name = parts[-1]
    if name.startswith("test_") or name.startswith("_sysconfigdata"):
        return True
    if len(parts) == 1 and name in _SKIP_MODULES:
        return True
    return False


@cache
def corpus_files(root: str | None = None) -> tuple[str, ...]:
    """All selected ``*.py`` files (POSIX paths relative to ``root``), sorted."""
    root = root or stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        # prune skipped directories (and config-3.x-... build directories)
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")]
        for fn in filenames:
            if not fn.endswith(".py"):
                continue
            rel = f"{rel_dir}/{fn}" if rel_dir else fn
            if _skip(rel):
                continue
            try:
                if os.path.getsize(os.path.join(root, rel)) > MAX_FILE_BYTES:
                    continue
            except OSError:
                continue
            out.append(rel)
    return tuple(sorted(out))


def train_files(root: str | None = None) -> tuple[str, ...]:
    """The training files: every corpus file except the held-out ones."""
    held = set(HELD_OUT_FILES)
    return tuple(f for f in corpus_files(root) if f not in held)


def eval_files(root: str | None = None) -> tuple[str, ...]:
    """The held-out files that exist in this interpreter's stdlib, in :data:`HELD_OUT_FILES` order."""
    root = root or stdlib_dir()
    return tuple(f for f in HELD_OUT_FILES if os.path.isfile(os.path.join(root, f)))


def _read(rel: str, root: str | None = None) -> bytes:
    root = root or stdlib_dir()
    with open(os.path.join(root, rel), "rb") as fh:
        data = fh.read()
    # normalise line endings so the task is the same on every platform
    return data.replace(b"\r\n", b"\n")


def encode(text: str | bytes) -> list[int]:
    """Token ids of ``text``: one id per UTF-8 byte (no special tokens added)."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return list(text)


def decode(ids) -> str:
    """Text of token ids; special tokens (>= 256) are dropped, invalid UTF-8 is replaced."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def _tokens_of(files, root) -> np.ndarray:
    chunks = []
    for rel in files:
        chunks.append(np.frombuffer(_read(rel, root), dtype=np.uint8).astype(np.uint16))
        chunks.append(np.array([EOS_ID], dtype=np.uint16))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint16)


@lru_cache(maxsize=2)
def training_tokens(root: str | None = None) -> np.ndarray:
    """The training stream: every training file's bytes followed by ``EOS_ID``, as ``uint16``."""
    arr = _tokens_of(train_files(root), root)
    arr.setflags(write=False)
    return arr


@lru_cache(maxsize=2)
def eval_tokens(root: str | None = None) -> np.ndarray:
    """The held-out stream (same layout as :func:`training_tokens`) for teacher-forced scoring."""
    arr = _tokens_of(eval_files(root), root)
    arr.setflags(write=False)
    return arr


def iter_training_batches(
    batch_size: int = 32,
    seq_len: int = 128,
    seed: int = 0,
    steps: int | None = None,
    root: str | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``(batch_size, seq_len + 1)`` int64 arrays of random windows of the training stream.

    Inputs are ``[:, :-1]``, next-token labels ``[:, 1:]``. The window starts come from
    ``numpy.random.Generator(PCG64(seed))``: the same seed gives the same batches.
    """
    data = training_tokens(root)
    n = len(data) - (seq_len + 1)
    if n <= 0:
        raise ValueError("training corpus is shorter than one window")
    rng = np.random.Generator(np.random.PCG64(seed))
    offsets = np.arange(seq_len + 1)
    i = 0
    while steps is None or i < steps:
        starts = rng.integers(0, n, size=batch_size)
        yield data[starts[:, None] + offsets[None, :]].astype(np.int64)
        i += 1


def _prompts_of_file(rel: str, root: str | None) -> list[EvalPrompt]:
    data = _read(rel, root)
    lines = data.split(b"\n")
    # the last element is what follows the final "\n" (normally b""): never a target
    out = []
    for k in range(MIN_CONTEXT_LINES, len(lines) - 1):
        target = lines[k]
        if not target.strip() or len(target) > TARGET_MAX_BYTES:
            continue
        ctx: list[bytes] = []
        size = 0
        j = k - 1
        while j >= 0 and size + len(lines[j]) + 1 <= PROMPT_MAX_BYTES:
            ctx.append(lines[j])
            size += len(lines[j]) + 1
            j -= 1
        if len(ctx) < MIN_CONTEXT_LINES:
            continue
        prompt = b"".join(line + b"\n" for line in reversed(ctx))
        try:
            p, t = prompt.decode("utf-8"), target.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append(EvalPrompt(id=f"{rel}:{k + 1}", file=rel, line_no=k + 1, prompt=p, target=t))
    return out


def _cut(item: EvalPrompt, cut: str) -> EvalPrompt:
    if cut == "line":
        return item
    line = item.target
    indent = len(line) - len(line.lstrip())
    k = indent + (len(line) - indent) // 2
    return EvalPrompt(
        id=item.id,
        file=item.file,
        line_no=item.line_no,
        prompt=item.prompt + line[:k],
        target=line[k:],
        prefix=line[:k],
    )


@lru_cache(maxsize=4)
def _all_prompts(root: str | None, cut: str) -> tuple[EvalPrompt, ...]:
    items = []
    for rel in eval_files(root):
        items.extend(_prompts_of_file(rel, root))
    items.sort(key=lambda it: hashlib.sha1(it.id.encode("utf-8")).hexdigest())
    return tuple(_cut(it, cut) for it in items)


def load_eval_prompts(n: int | None = 200, cut: str = "half", root: str | None = None) -> list[EvalPrompt]:
    """The first ``n`` held-out prompts in their fixed (hash) order; ``n=None`` gives all (about 4,500).

    ``cut="half"`` (default): the prompt ends halfway through the line; ``cut="line"``: it ends
    at the line boundary. Both cuts use the same lines in the same order.
    """
    if cut not in CUTS:
        raise ValueError(f"unknown cut {cut!r}: expected one of {CUTS}")
    items = _all_prompts(root, cut)
    return list(items if n is None else items[:n])


def _as_bytes(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("utf-8")


def completion_line(generated: str | bytes) -> bytes:
    r"""The generated bytes up to and including the first ``"\n"`` (all of them if none)."""
    g = _as_bytes(generated)
    i = g.find(b"\n")
    return g if i < 0 else g[: i + 1]


def _target_bytes(item) -> bytes:
    target = item.target if isinstance(item, EvalPrompt) else item["target"]
    return _as_bytes(target) + b"\n"


def exact_match(item: EvalPrompt | dict, generated: str | bytes) -> float:
    """1.0 if the first generated line equals the target line (newline included), else 0.0."""
    return float(completion_line(generated) == _target_bytes(item))


def soft_score(item: EvalPrompt | dict, generated: str | bytes) -> float:
    r"""Fraction of the bytes of ``target + "\n"`` matched before the first error."""
    g, t = completion_line(generated), _target_bytes(item)
    k = 0
    for a, b in zip(g, t, strict=False):  # a completion may be shorter or longer than the target
        if a != b:
            break
        k += 1
    return k / len(t)


def similarity(item: EvalPrompt | dict, generated: str | bytes) -> float:
    """``difflib.SequenceMatcher`` ratio (0..1) of the first generated line, without its newline, to the target.

    Compared as bytes.
    """
    g = completion_line(generated)
    if g.endswith(b"\n"):
        g = g[:-1]
    t = _target_bytes(item)[:-1]
    return difflib.SequenceMatcher(None, g, t, autojunk=False).ratio()


def score_completion(item: EvalPrompt | dict, generated: str | bytes, metric: str = "soft") -> float:
    """Score in [0, 1] of one completion (the text generated after ``item.prompt``).

    ``metric`` is ``"soft"`` (default), ``"exact"`` or ``"similarity"``.
    """
    if metric == "soft":
        return soft_score(item, generated)
    if metric == "exact":
        return exact_match(item, generated)
    if metric == "similarity":
        return similarity(item, generated)
    raise ValueError(f"unknown metric {metric!r}: expected one of {METRICS}")


def score_details(item: EvalPrompt | dict, generated: str | bytes) -> dict:
    """All three scores of one completion: ``{"exact", "soft", "similarity"}``."""
    return {m: score_completion(item, generated, m) for m in METRICS}
