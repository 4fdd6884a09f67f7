"""Offline CLIP BPE tokenizers for the baselines' tiny presets: a vocabulary defined in code, no file, no network.

Every tiny preset whose real model reads a CLIP tokenizer (``vocab.json`` + ``merges.txt``) builds a
:class:`transformers.CLIPTokenizer` with :func:`tiny_clip_tokenizer`: CLIP's normaliser (lower-casing), its
pre-tokeniser, ``</w>`` word ends and ``<|startoftext|>`` / ``<|endoftext|>`` framing, over

* an ``alphabet`` of symbols, each a token alone and word-final (``c`` and ``c</w>``), so that any text made of
  them tokenises (a word the merges do not cover falls apart into its symbols);
* merges for each of ``words``, whose whole-word tokens are in the vocabulary: learned by byte-pair encoding
  (``"bpe"``, :func:`toytokenizers.bpe.learn_bpe_merges`: each word then tokenises as one token) or spelled out left
  to right (``"prefix"``: ``d+o``, ``do+g</w>``; BPE applies merges by rank, so a word whose pieces another word's
  earlier merges take, ``background`` after ``a+c`` of ``across``, splits into a few tokens);
* the two specials, after the other tokens (as in CLIP's ``vocab.json``) or first (ids 0 and 1).

The baselines differ only in those choices (each states which upstream tokenizer its tiny one stands in for); the
ids are the same on every machine and every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from toytokenizers.bpe import learn_bpe_merges

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
#: How the merges that make a word one token are found.
MergeRule = Literal["bpe", "prefix"]


def byte_unicode_table() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE's map from byte values to printable characters, in CLIP's vocabulary order.

    The printable bytes map to themselves and come first (so ``!`` is id 0 in CLIP's ``vocab.json``); the other
    bytes map to ``chr(256 + k)`` in byte order (``bytes_to_unicode`` of openai/CLIP ``simple_tokenizer.py``).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in table]
    table.update({byte: chr(256 + k) for k, byte in enumerate(others)})
    return table


def prefix_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that build each word left to right (``d+o``, ``do+g</w>``), in order, each once."""
    merges: dict[tuple[str, str], None] = {}  # ordered and unique
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            merges.setdefault((merged, symbol))
            merged += symbol
    return list(merges)


def tiny_clip_vocab(alphabet: Sequence[str], words: Iterable[str] = (), *, merge_rule: MergeRule = "bpe",
                    extra_merges: Sequence[tuple[str, str]] = (), specials_first: bool = False,
                    ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` (the contents of ``vocab.json`` and ``merges.txt``) of a tiny CLIP tokenizer.

    The vocabulary holds, in id order: the specials when ``specials_first``; each symbol of ``alphabet``; each
    symbol + ``</w>``; the token each merge makes (``extra_merges`` first, then those of ``words``, sorted and
    unique, by ``merge_rule``); the specials otherwise.
    """
    words = sorted(set(words))
    learned = learn_bpe_merges(words) if merge_rule == "bpe" else prefix_merges(words)
    merges = list(dict.fromkeys([*extra_merges, *learned]))
    specials = [BOS, EOS]
    pieces = [*alphabet, *(symbol + "</w>" for symbol in alphabet), *(left + right for left, right in merges)]
    vocab: dict[str, int] = {}
    for piece in specials + pieces if specials_first else pieces + specials:
        vocab.setdefault(piece, len(vocab))
    return vocab, merges


def tiny_clip_tokenizer(model_max_length: int, alphabet: Sequence[str], words: Iterable[str] = (), *,
                        merge_rule: MergeRule = "bpe", extra_merges: Sequence[tuple[str, str]] = (),
                        specials_first: bool = False, pad_token: str = EOS) -> CLIPTokenizer:
    """An offline :class:`~transformers.CLIPTokenizer` over :func:`tiny_clip_vocab` (see the module docstring).

    ``pad_token`` is ``<|endoftext|>`` (openai/clip-vit-large-patch14) or ``!`` (the laion CLIP-ViT-bigG-14
    tokenizers).
    """
    from transformers import CLIPTokenizer  # imported here: describing a method needs no transformers

    vocab, merges = tiny_clip_vocab(alphabet, words, merge_rule=merge_rule, extra_merges=extra_merges,
                                    specials_first=specials_first)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=model_max_length)
