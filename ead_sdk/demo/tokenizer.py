"""The demo pair's shared byte-level tokenizer, in Hugging Face format.

Token id = UTF-8 byte value (0-255); ``<|endoftext|>`` = 256 (EOS), ``<|pad|>`` = 257.
Built with the ``tokenizers`` library: a BPE model whose vocabulary is the 256 byte symbols of
the GPT-2 byte-to-unicode mapping (ordered by byte value) with **no merges**, a ``ByteLevel``
pre-tokenizer (no regex split, no prefix space) and a ``ByteLevel`` decoder. So
``encode(text)`` gives exactly one id per UTF-8 byte, in order, and ``decode`` round-trips.
No BOS token and no post-processor: ``add_special_tokens`` adds nothing.

``torch`` is never imported here; ``tokenizers``/``transformers`` only inside the functions.
"""

from __future__ import annotations

import json
import os

from .task import EOS_ID, EOS_TOKEN, PAD_ID, PAD_TOKEN

MODEL_MAX_LENGTH = 1024


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_tokenizer():
    """A ``transformers.PreTrainedTokenizerFast`` for the byte-level vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    mapping = _bytes_to_unicode()
    vocab = {mapping[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    assert tok.token_to_id(EOS_TOKEN) == EOS_ID and tok.token_to_id(PAD_TOKEN) == PAD_ID
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        split_special_tokens=True,  # text is always bytes: a spelled "<|endoftext|>" is not EOS
    )


def check_tokenizer(tok) -> None:
    """Raise ``AssertionError`` unless ``tok`` is the byte-level tokenizer described above."""
    samples = [
        "def f(x):\n    return x  ,  'h\u00e9llo' \U0001f642 \t\n  . ?",
        "",
        " leading space and trailing  ",
        "class A(B):\n\tpass\n",
        "<|endoftext|> spelled out, <|pad|> too",
    ]
    for s in samples:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        assert ids == list(s.encode("utf-8")), (s, ids)
        assert tok.decode(ids) == s, (s, tok.decode(ids))
    assert tok.eos_token_id == EOS_ID and tok.pad_token_id == PAD_ID
    assert len(tok) == 258


def save_tokenizer(out_dir: str | os.PathLike) -> None:
    """Build, check and save the tokenizer to ``out_dir`` (``tokenizer.json`` + config)."""
    tok = build_tokenizer()
    check_tokenizer(tok)
    os.makedirs(out_dir, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    # Name the class that both transformers 4.x and 5.x resolve (5.x writes its own
    # "TokenizersBackend", unknown to 4.x; in 5.x PreTrainedTokenizerFast is that class).
    cfg_path = os.path.join(str(out_dir), "tokenizer_config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
