"""The tiny presets' offline CLIP tokenizers (toytokenizers.clip) and the baselines' choices of them."""

from __future__ import annotations

import string

import pytest

from baselines import blip_diffusion, ip_adapter, lambda_eclipse_model, ms_diffusion, ssr_encoder, videobooth
from toytokenizers.clip import BOS, EOS, byte_unicode_table, prefix_merges, tiny_clip_tokenizer, tiny_clip_vocab
from toytokenizers.corpus import TINY_CORPUS, corpus_words

LETTERS = tuple(string.ascii_lowercase)


def test_corpus_words_are_the_distinct_lower_case_words_sorted():
    words = corpus_words()
    assert words == sorted(set(TINY_CORPUS.lower().split())) and "dog" in words and "teddy" in words


def test_prefix_merges_spell_each_word_left_to_right_once():
    assert prefix_merges(["dog", "do", "a"]) == [("d", "o"), ("do", "g</w>"), ("d", "o</w>")]


def test_byte_unicode_table_is_clips_byte_to_character_map():
    table = byte_unicode_table()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert list(table.values())[0] == "!" and table[ord("a")] == "a" and table[ord(" ")] == "Ġ"  # chr(256 + 32)


@pytest.mark.parametrize("merge_rule", ["bpe", "prefix"])
@pytest.mark.parametrize("specials_first", [False, True])
def test_vocab_layout_specials_alphabet_word_ends_then_merged_tokens(merge_rule, specials_first):
    vocab, merges = tiny_clip_vocab(LETTERS, ["dog", "dot", "cat"], merge_rule=merge_rule,
                                    specials_first=specials_first)
    ids = sorted(vocab, key=vocab.__getitem__)
    body = ids[2:] if specials_first else ids[:-2]
    assert (ids[:2] if specials_first else ids[-2:]) == [BOS, EOS]
    assert body[:26] == list(LETTERS) and body[26:52] == [c + "</w>" for c in LETTERS]
    assert body[52:] == list(dict.fromkeys(left + right for left, right in merges))
    assert {"dog</w>", "dot</w>", "cat</w>"} <= set(vocab) and sorted(vocab.values()) == list(range(len(vocab)))


def test_extra_merges_come_first_and_are_not_repeated():
    _, merges = tiny_clip_vocab(LETTERS, ["sd"], merge_rule="prefix", extra_merges=[("s", "d</w>"), ("s", "d")])
    assert merges == [("s", "d</w>"), ("s", "d")]


def test_tokenizer_frames_pads_truncates_and_decodes():
    tokenizer = tiny_clip_tokenizer(8, LETTERS, ["dog", "on", "beach"], specials_first=True)
    vocab = tokenizer.get_vocab()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 1)
    ids = tokenizer("A Dog on the beach").input_ids
    assert ids == [0, vocab["a</w>"], vocab["dog</w>"], vocab["on</w>"], vocab["t"], vocab["h"], vocab["e</w>"],
                   vocab["beach</w>"], 1]
    padded = tokenizer("dog", padding="max_length").input_ids
    assert padded == [0, vocab["dog</w>"], 1] + [1] * 5
    truncated = tokenizer("dog " * 20, padding="max_length", truncation=True).input_ids
    assert len(truncated) == 8 and truncated[0] == 0 and truncated[-1] == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a dog on the beach"
    assert tiny_clip_tokenizer(8, LETTERS, pad_token="a").pad_token_id == tiny_clip_vocab(LETTERS)[0]["a"]


#: Each baseline's tiny tokenizer: (builder, its length, specials first, words whose token is in the vocabulary,
#: whether the merges were learned by BPE (each of those words is then one token), pad token).
BASELINES = {
    "blip-diffusion": (blip_diffusion.build_tiny_clip_tokenizer, blip_diffusion.TINY_TEXT_POSITIONS, False,
                       corpus_words(), False, EOS),
    "ip-adapter": (ip_adapter.build_tiny_clip_tokenizer, ip_adapter.TINY_TEXT_LENGTH, True, [], False, EOS),
    "lambda-eclipse": (lambda: lambda_eclipse_model.build_tiny_clip_tokenizer(32), 32, False, corpus_words(), True,
                       "!"),
    "ms-diffusion": (ms_diffusion.build_tiny_clip_tokenizer, 77, True, [*corpus_words(), "best", "quality", "high"],
                     True, EOS),
    "ssr-encoder": (ssr_encoder.build_tiny_clip_tokenizer, ssr_encoder.TINY_TEXT_LENGTH, True, [], False, EOS),
    "videobooth": (videobooth.build_tiny_tokenizer, videobooth.TINY_TEXT_LENGTH, False, corpus_words(), False, EOS),
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baselines_tiny_tokenizer(name):
    build, length, specials_first, words, learned, pad = BASELINES[name]
    tokenizer = build()
    vocab = tokenizer.get_vocab()
    assert tokenizer.model_max_length == length and tokenizer.pad_token == pad
    expected_specials = [0, 1] if specials_first else [len(vocab) - 2, len(vocab) - 1]
    assert [tokenizer.bos_token_id, tokenizer.eos_token_id] == expected_specials
    assert {word + "</w>" for word in words} <= set(vocab)
    for word in words if learned else ():
        assert tokenizer.tokenize(word) == [word + "</w>"], (name, word)
    prompt = "a teddy bear on the beach, 3 cats."  # no "!": λ-ECLIPSE pads with it
    ids = tokenizer(prompt, padding="max_length", truncation=True).input_ids
    assert len(ids) == length and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",").replace(" .", ".") == prompt
    assert build()(prompt).input_ids == tokenizer(prompt).input_ids  # the same ids from a new build


def test_videobooths_placeholder_is_two_tokens():
    assert videobooth.build_tiny_tokenizer().tokenize("sdksd") == ["sdk", "sd</w>"]
