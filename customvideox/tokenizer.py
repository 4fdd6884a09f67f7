"""An offline T5 tokenizer for the tiny preset.

The real pipeline uses CogVideoX-5B's T5 tokenizer (``tokenizer/spiece.model``). The tiny preset must
work with no file and no network, so it builds a :class:`transformers.T5Tokenizer` (a *tokenizers*
Unigram model, exactly T5's structure: ``<pad>=0``, ``</s>=1``, ``<unk>=2``, Metaspace ``"▁"`` word
prefix, ``</s>`` appended) from a vocabulary that is *defined in this file*:

* every printable ASCII character, alone and with the ``"▁"`` word prefix (so any ASCII text has a
  segmentation; other characters become ``<unk>``);
* ``"▁" + word`` for every word of :data:`TINY_CORPUS` (a fixed text of common words of subject-driven
  prompts) and its capitalised form, in sorted order.

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

#: Fixed text whose words become whole-word tokens (DreamBench/VideoBench style prompt words).
TINY_CORPUS = """
a an the of in on at with and or to from by for into onto over under near behind beside next top bottom
is are be being sits sitting stands standing runs running walks walking jumps jumping plays playing
swims swimming flies flying floats floating rides riding moves moving rolls rolling looks looking
holds holding wears wearing reads reading eats eating drinks drinking sleeps sleeping dances dancing
dog dogs cat cats puppy kitten bird duck toy toys teddy bear bears monster robot backpack bag bowl can
candle clock sneaker sneakers shoe shoes boot boots glasses sunglasses teapot vase plushie stuffed
animal car cars bike bicycle biplane plane boat train truck chair table cup mug bottle hat jacket
sweater shirt dress girl boy man woman person child people face hair hands
red blue green yellow purple pink orange black white brown gray grey golden silver shiny wet dirty
cube shaped small big large tiny little old new soft warm cold bright dark sunny rainy snowy cozy
jungle snow beach street cobblestone fabric wooden floor city mountain mountains house forest rug
grass field park garden room window kitchen desk lake river sea ocean sky clouds sun moon night day
background foreground sunset sunrise light sunlight curtains book road bridge tree trees flowers
water sand rock rocks stone wall door lamp sofa bed pillow blanket box basket ball leaves autumn
winter summer spring camera video scene view close up slowly quickly gently around across through
its their his her it they camera pans zooms
circle square triangle shape bouncing growing spinning sliding larger smaller middle left right
"""

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
