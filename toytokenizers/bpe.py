"""Byte-pair-encoding merges for the tiny presets' offline CLIP tokenizers (no vocabulary file to download)."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence


def learn_bpe_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn every word of ``words`` into one token (``</w>`` ends a word, as in CLIP).

    A plain BPE training run (most frequent pair first, ties broken by the pair itself, so it is deterministic).
    """
    sequences = [tuple(word[:-1]) + (word[-1] + "</w>",) for word in words]
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def account(index: int, sign: int) -> None:
        symbols = sequences[index]
        for pair in itertools.pairwise(symbols):
            counts[pair] += sign
            if sign > 0:
                where[pair].add(index)
            elif counts[pair] == 0:
                del counts[pair]

    for index in range(len(sequences)):
        account(index, +1)
    merges = []
    while counts:
        best = min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        for index in sorted(where.pop(best)):
            account(index, -1)
            symbols, merged, i = sequences[index], [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            sequences[index] = tuple(merged)
            account(index, +1)
    return merges
