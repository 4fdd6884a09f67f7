"""Offline toy tokenizers for the tiny presets: no vocabulary file, no network, the same token ids on every machine.

The tiny presets (``--preset tiny``: CustomVideoX's in :mod:`customvideox.presets`, each baseline's beside its
method) build random-initialised models with the real models' structure; their tokenizers come from here:

* :mod:`toytokenizers.corpus`: :data:`~toytokenizers.corpus.TINY_CORPUS`, the words that become whole tokens;
* :mod:`toytokenizers.t5`: a T5 Unigram tokenizer over it (CustomVideoX's T5, Wan-VACE's UMT5, CogVideoX-5B-I2V);
* :mod:`toytokenizers.bpe`: a deterministic byte-pair-merge learner for the CLIP BPE tokenizers of the baselines;
* :mod:`toytokenizers.clip`: those CLIP BPE tokenizers (each baseline picks the alphabet, words and merge rule).

A top-level package (like ``mediaio``) so that ``customvideox`` uses it without importing ``baselines`` or
``videobench``.
"""
