"""An offline T5 tokenizer for the tiny presets (CustomVideoX's T5, Wan-VACE's UMT5, the CogVideoX-5B-I2V stage).

The real pipeline uses CogVideoX-5B's T5 tokenizer (``tokenizer/spiece.model``). The tiny preset must
work with no file and no network, so it builds a :class:`transformers.T5Tokenizer` (a *tokenizers*
Unigram model, exactly T5's structure: ``<pad>=0``, ``</s>=1``, ``<unk>=2``, Metaspace ``"▁"`` word
prefix, ``</s>`` appended) from a vocabulary that is *defined in this file*:

* every printable ASCII character, alone and with the ``"▁"`` word prefix (so any ASCII text has a
  segmentation; other characters become ``<unk>``);
* ``"▁" + word`` for every word of :data:`~toytokenizers.corpus.TINY_CORPUS` (a fixed text of common words of
  subject-driven prompts) and its capitalised form, in sorted order.

All pieces share one score, so Unigram's Viterbi segmentation is the one with the fewest pieces:
known words are one token, unknown words fall back to characters. Nothing is trained or downloaded,
and the vocabulary (and therefore every token id) is identical on every machine and every run.
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import T5Tokenizer

from toytokenizers.corpus import TINY_CORPUS

_SPECIALS = ("<pad>", "</s>", "<unk>")
_PIECE_SCORE = -1.0
_WORD = re.compile(r"[A-Za-z]+")


def tiny_vocab() -> list[tuple[str, float]]:
    """The tiny tokenizer's ``(piece, score)`` list, in id order (specials first, as in T5)."""
    lower = set(_WORD.findall(TINY_CORPUS))
    words = sorted(lower | {word.capitalize() for word in lower})
    characters = [c for c in string.printable if not c.isspace()]
    pieces = ["▁"] + characters + ["▁" + c for c in characters] + ["▁" + w for w in words]
    seen: set[str] = set()
    vocab = [(token, 0.0) for token in _SPECIALS]
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, _PIECE_SCORE))
    return vocab


def build_tiny_tokenizer(model_max_length: int = 226) -> T5Tokenizer:
    """A deterministic, offline :class:`~transformers.T5Tokenizer` over :func:`tiny_vocab` (no sentinels)."""
    from transformers import T5Tokenizer  # imported here: the tiny corpus is read without loading transformers

    return T5Tokenizer(vocab=tiny_vocab(), extra_ids=0, model_max_length=model_max_length)
