"""blip-diffusion+i2v: the BLIP-Diffusion port (layout, numerics, loading offline, sampling) and its registration.

Tiny random components stand in for Salesforce/blipdiffusion: they are saved in the published folder layout
(``pytorch_model.bin`` / ``diffusion_pytorch_model.bin`` with the upstream key names, configs written by the
transformers / diffusers config classes) and loaded through the real loader with the network forbidden.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from baselines.blip_diffusion import (
    BERT_TOKENIZER_REPO,
    BLIP_DIFFUSION_REPO,
    TINY_TEXT_POSITIONS,
    BlipDiffusionOptions,
    BlipDiffusionPersonalizer,
    build_tiny_sampler,
    load_qformer_tokenizer,
    load_sampler,
    load_subject_encoder,
    subject_prompt,
    tiny_bert_vocab,
    tiny_clip_vocab,
    tiny_configs,
)
from baselines.blip_diffusion_config import CLIP_MEAN, CLIP_STD, NEGATIVE_PROMPT
from baselines.blip_diffusion_model import (
    BlipSubjectEncoder,
    ContextCLIPTextModel,
    ReferencePreprocess,
    build_prompt,
)
from videobench.cases import Case
from videobench.methods import MethodContext, get_method
from videobench.options import OptionError
from videobench.weights import WeightsConfig, WeightsLoadError, check_weights

METHOD = "blip-diffusion+i2v"
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- fixtures


def _image(color: tuple[int, int, int], size: tuple[int, int] = (90, 60), seed: int = 0) -> Image.Image:
    """A coloured, slightly textured RGB image."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color)[None, None] + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def _randomized(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Distinct random values for every floating tensor (so a tensor loaded under the wrong key shows)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator) * 0.2 if value.is_floating_point() else value.clone()
            for key, value in state.items()}


def save_official_layout(folder: Path, bert: Path, sampler) -> dict[str, dict[str, torch.Tensor]]:
    """Write ``sampler``'s components (re-randomised) as Salesforce/blipdiffusion + bert-base-uncased hold them."""
    qformer_tokenizer_vocab = tiny_bert_vocab()
    blip2, text = tiny_configs(len(qformer_tokenizer_vocab) + 1, len(sampler.tokenizer))
    saved: dict[str, dict[str, torch.Tensor]] = {}

    blip2.save_pretrained(folder / "qformer")
    saved["qformer"] = _randomized(sampler.subject_encoder.state_dict(), 1)
    positions = torch.arange(blip2.qformer_config.max_position_embeddings)[None]  # saved by upstream's buffer
    torch.save({**saved["qformer"], "embeddings.position_ids": positions}, folder / "qformer" / "pytorch_model.bin")

    text.save_pretrained(folder / "text_encoder")
    saved["text_encoder"] = _randomized(sampler.text_encoder.state_dict(), 2)
    torch.save({**saved["text_encoder"], "text_model.embeddings.position_ids": torch.arange(TINY_TEXT_POSITIONS)[None]},
               folder / "text_encoder" / "pytorch_model.bin")

    for name, seed in (("unet", 3), ("vae", 4)):
        module = copy.deepcopy(getattr(sampler, name))
        saved[name] = _randomized(module.state_dict(), seed)
        module.load_state_dict(saved[name])
        module.save_pretrained(folder / name, safe_serialization=False)  # diffusion_pytorch_model.bin, as published
    sampler.scheduler.save_pretrained(folder / "scheduler")

    vocab, merges = tiny_clip_vocab()  # CLIP BPE files, as in the published tokenizer/
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": TINY_TEXT_POSITIONS, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    (folder / "image_processor").mkdir()
    (folder / "image_processor" / "preprocessor_config.json").write_text(json.dumps({
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
        "do_resize": True, "image_mean": list(CLIP_MEAN), "image_processor_type": "BlipImageProcessor",
        "image_std": list(CLIP_STD), "resample": 3, "rescale_factor": 1 / 255,
        "size": {"height": 28, "width": 28}}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "BlipDiffusionPipeline", "_diffusers_version": "0.18.0.dev0", "ctx_begin_pos": 2,
        "image_processor": ["blip_diffusion", "BlipImageProcessor"], "mean": list(CLIP_MEAN),
        "qformer": ["blip_diffusion", "Blip2QFormerModel"], "scheduler": ["diffusers", "PNDMScheduler"],
        "std": list(CLIP_STD), "text_encoder": ["blip_diffusion", "ContextCLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))

    # google-bert/bert-base-uncased's tokenizer files; "dog" and "cat" swapped, so reading this file shows
    vocab = list(qformer_tokenizer_vocab)
    dog, cat = vocab.index("dog"), vocab.index("cat")
    vocab[dog], vocab[cat] = vocab[cat], vocab[dog]
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    saved["bert_ids"] = {"dog": torch.tensor(cat), "cat": torch.tensor(dog)}
    return saved


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sampler()


@pytest.fixture(scope="module")
def official(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("weights")
    saved = save_official_layout(root / "blipdiffusion", root / "bert-base-uncased", tiny)
    return root, saved


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or hub download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for target in ("huggingface_hub.hf_hub_download", "huggingface_hub.snapshot_download",
                   "huggingface_hub.file_download.hf_hub_download", "transformers.utils.hub.hf_hub_download"):
        monkeypatch.setattr(target, refuse, raising=False)


# ------------------------------------------------------------------------------------- key layout, numerics


def test_key_layout_is_diffusers_blip_diffusion(official, tiny):
    """Our modules have exactly the parameter names and shapes of the classes that wrote the published files."""
    blip_deprecated = pytest.importorskip("diffusers.pipelines.deprecated.blip_diffusion.modeling_blip2")
    ctx_deprecated = pytest.importorskip("diffusers.pipelines.deprecated.blip_diffusion.modeling_ctx_clip")
    root, _ = official
    blip2, text = tiny_configs(len(tiny.qformer_tokenizer), len(tiny.tokenizer))
    blip2.tokenizer = str(root / "bert-base-uncased")  # its constructor reads a BERT tokenizer
    references = {"qformer": blip_deprecated.Blip2QFormerModel(blip2).state_dict(),
                  "text_encoder": ctx_deprecated.ContextCLIPTextModel(text).state_dict()}
    ours = {"qformer": BlipSubjectEncoder(blip2).state_dict(), "text_encoder": ContextCLIPTextModel(text).state_dict()}
    for name, reference in references.items():
        expected = {key: tuple(value.shape) for key, value in reference.items() if not key.endswith("position_ids")}
        assert {key: tuple(value.shape) for key, value in ours[name].items()} == expected, name


def test_full_size_parameter_counts_match_published_files():
    """At the published configs (diffusers' convert_blipdiffusion_to_diffusers.py; SD 1.5's CLIP-L text encoder),
    on the meta device: float32 sizes of qformer/pytorch_model.bin (1.98 GB) and text_encoder/ (492 MB)."""
    from transformers import Blip2Config, CLIPTextConfig

    blip2 = Blip2Config(
        vision_config={"hidden_size": 1024, "num_hidden_layers": 23, "num_attention_heads": 16, "image_size": 224,
                       "patch_size": 14, "intermediate_size": 4096, "hidden_act": "quick_gelu"},
        qformer_config={"cross_attention_frequency": 1, "encoder_hidden_size": 1024, "vocab_size": 30523},
        num_query_tokens=16)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    with torch.device("meta"):
        qformer, text_encoder = BlipSubjectEncoder(blip2), ContextCLIPTextModel(text)
    assert sum(p.numel() for p in qformer.parameters()) * 4 / 1e9 == pytest.approx(1.98, abs=0.005)
    assert sum(p.numel() for p in text_encoder.parameters()) * 4 / 1e6 == pytest.approx(492, abs=0.5)
    assert qformer.query_tokens.shape == (1, 16, 768) and len(qformer.visual_encoder.encoder.layers) == 23


def _layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)


def _linear(x, state, prefix):
    return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]


def _attention(q, k, v, heads, causal=False):
    """softmax(q k^T / sqrt(d)) v, written out."""
    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def naive_vision(state, config, pixels):
    """LAVIS's CLIP ViT (conv1, class token, positions, ln_pre, resblocks) + BLIP-2's ln_vision."""
    eps = config.layer_norm_eps
    x = F.conv2d(pixels, state["embeddings.patch_embedding.weight"], stride=config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["embeddings.class_embedding"].expand(x.shape[0], 1, -1), x], 1)
    x = _layer_norm(x + state["embeddings.position_embedding"], state, "pre_layernorm", eps)
    for i in range(config.num_hidden_layers):
        p = f"encoder.layers.{i}."
        h = _layer_norm(x, state, p + "layer_norm1", eps)
        q, k, v = _linear(h, state, p + "self_attn.qkv").chunk(3, -1)
        x = x + _linear(_attention(q, k, v, config.num_attention_heads), state, p + "self_attn.projection")
        h = _layer_norm(x, state, p + "layer_norm2", eps)
        x = x + _linear(_quick_gelu(_linear(h, state, p + "mlp.fc1")), state, p + "mlp.fc2")
    return _layer_norm(x, state, "post_layernorm", eps)


def test_subject_encoder_matches_reference(tiny):
    """Vision tower = a written-out CLIP ViT; Q-Former = transformers' Blip2QFormerModel; projection = LAVIS's."""
    from transformers import Blip2QFormerModel

    torch.manual_seed(0)
    model = tiny.subject_encoder
    state = model.state_dict()
    config = tiny_configs(len(tiny.qformer_tokenizer), len(tiny.tokenizer))[0]
    pixels = torch.randn(2, 3, 28, 28)
    vision_state = {k.removeprefix("visual_encoder."): v for k, v in state.items() if k.startswith("visual_encoder.")}
    image_features = naive_vision(vision_state, config.vision_config, pixels)
    torch.testing.assert_close(model.visual_encoder(pixels), image_features, atol=1e-5, rtol=1e-5)

    qformer_config = copy.deepcopy(config.qformer_config)
    qformer_config.use_qformer_text_input = True  # the text feed-forward (intermediate/output) of every layer
    reference = Blip2QFormerModel(qformer_config).eval()
    reference.load_state_dict({"layernorm.weight": state["embeddings.LayerNorm.weight"],
                               "layernorm.bias": state["embeddings.LayerNorm.bias"],
                               **{k: v for k, v in state.items() if k.startswith("encoder.")}})
    text = tiny.qformer_tokenizer(["dog", "teddy bear"], return_tensors="pt", padding=True)
    for row in range(2):
        length = int(text.attention_mask[row].sum())
        ids = text.input_ids[row: row + 1, :length]
        words = state["embeddings.word_embeddings.weight"][ids] \
            + state["embeddings.position_embeddings.weight"][:length]
        embeds = torch.cat([state["query_tokens"], words], 1)
        out = reference(query_embeds=embeds, query_length=config.num_query_tokens,
                        encoder_hidden_states=image_features[row: row + 1]).last_hidden_state
        queries = out[:, : config.num_query_tokens]
        h = _layer_norm(queries, state, "proj_layer.LayerNorm", 1e-12)
        expected = queries + _linear(_quick_gelu(_linear(h, state, "proj_layer.dense1")), state, "proj_layer.dense2")
        # the padded batch (masked keys) and the single unpadded row give the same subject embeddings
        batched = model(pixels, text.input_ids, text.attention_mask)[row: row + 1]
        torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(pixels[row: row + 1], ids), expected, atol=1e-5, rtol=1e-5)


def naive_text(state, config, embeds):
    """CLIP's text transformer on given input embeddings (positions added here), causal, written out."""
    eps = config.layer_norm_eps
    x = embeds + state["text_model.embeddings.position_embedding.weight"][: embeds.shape[1]]
    for i in range(config.num_hidden_layers):
        p = f"text_model.encoder.layers.{i}."
        h = _layer_norm(x, state, p + "layer_norm1", eps)
        q, k, v = (_linear(h, state, p + f"self_attn.{n}_proj") for n in "qkv")
        x = x + _linear(_attention(q, k, v, config.num_attention_heads, causal=True), state, p + "self_attn.out_proj")
        h = _layer_norm(x, state, p + "layer_norm2", eps)
        x = x + _linear(_quick_gelu(_linear(h, state, p + "mlp.fc1")), state, p + "mlp.fc2")
    return _layer_norm(x, state, "text_model.final_layer_norm", eps)


def test_text_encoder_matches_clip_and_splices_context(tiny):
    from transformers import CLIPTextModel

    model, config = tiny.text_encoder, tiny.text_encoder.text_model.config
    state = model.state_dict()
    ids = tiny.tokenizer(["a dog swimming underwater"], padding="max_length", max_length=28,
                         return_tensors="pt").input_ids
    # without subject embeddings: exactly transformers' CLIPTextModel
    reference = CLIPTextModel(config).eval()
    keys = set(reference.state_dict())
    reference.load_state_dict({(k if k in keys else k.removeprefix("text_model.")): v for k, v in state.items()},
                              strict=False)
    assert all(torch.equal(v, state.get(k, state.get("text_model." + k))) for k, v in reference.state_dict().items()
               if not k.endswith("position_ids"))
    torch.testing.assert_close(model(ids), reference(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5)
    # with them: spliced after BOS and "a", one causal sequence over all 32 positions
    ctx = torch.randn(1, 4, 32)
    tokens = state["text_model.embeddings.token_embedding.weight"][ids]
    spliced = torch.cat([tokens[:, :2], ctx, tokens[:, 2:]], 1)
    out = model(ids, ctx, ctx_begin_pos=2)
    assert out.shape == (1, 32, 32)
    torch.testing.assert_close(out, naive_text(state, config, spliced), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :2], model(ids)[:, :2], atol=1e-5, rtol=1e-5)  # causal: before ctx unchanged
    with pytest.raises(ValueError, match="positions"):
        model(torch.cat([ids, ids[:, :1]], 1), ctx)


def test_reference_preprocess_matches_lavis_and_diffusers():
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    image = _image((200, 40, 40), size=(97, 61))
    lavis = transforms.Compose([transforms.Resize(28, interpolation=InterpolationMode.BICUBIC),
                                transforms.CenterCrop(28), transforms.ToTensor(),
                                transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(ReferencePreprocess(size=28)(image), lavis(image), atol=1e-6, rtol=0)
    squashed = np.asarray(image.resize((28, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    expected = (torch.from_numpy(squashed).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) \
        / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(ReferencePreprocess(size=28, crop="squash")(image), expected)


def test_prompt_building():
    assert build_prompt("swimming underwater", "dog", 1.0, 2) == "a dog swimming underwater, a dog swimming underwater"
    assert build_prompt(" a dog on the beach ", None, 0.5, 4) == "a dog on the beach, a dog on the beach"
    assert build_prompt("x", "dog").count("a dog x") == 20
    with pytest.raises(ValueError, match="dropped"):
        build_prompt("x", "dog", 0.01, 20)
    assert subject_prompt("A dog in the jungle", "dog") == ("A dog in the jungle", None)
    assert subject_prompt("an apple rolling", "apple") == ("an apple rolling", None)
    assert subject_prompt("a drone shot circling a dog", "dog") == ("a drone shot circling a dog", "dog")
    assert subject_prompt("a red circle bouncing", "circle") == ("a red circle bouncing", None)
    assert subject_prompt("a cube shaped stuffed animal", "stuffed animal")[1] is None
    assert subject_prompt("a very big red ball", "ball") == ("a very big red ball", "ball")  # > 2 modifiers
    assert subject_prompt("a dog carrying a ball", "ball") == ("a dog carrying a ball", "ball")
    assert subject_prompt("a dog a ball", "ball")[1] == "ball"  # an article starts another phrase
    assert subject_prompt("the dog runs", "dog")[1] == "dog"
    assert subject_prompt("a dogged man", "dog") == ("a dogged man", "dog")
    assert subject_prompt("a dog in the snow", "dog", "prefix") == ("a dog in the snow", "dog")
    with pytest.raises(ValueError, match="entity"):
        subject_prompt("a dog", " ")


# ------------------------------------------------------------------------------------------------ loading


def test_loads_official_layout_offline(official, no_network):
    root, saved = official
    sampler = load_sampler(root / "blipdiffusion", root / "bert-base-uncased")
    for name, module in (("qformer", sampler.subject_encoder), ("text_encoder", sampler.text_encoder),
                         ("unet", sampler.unet), ("vae", sampler.vae)):
        loaded = module.state_dict()
        assert set(loaded) == set(saved[name]), name
        for key, tensor in loaded.items():
            assert torch.equal(tensor, saved[name][key]), f"{name}: {key}"
    # the Q-Former's tokenizer comes from the folder (its swapped ids), plus [DEC] at the end (30523 upstream)
    tokenizer = sampler.qformer_tokenizer
    assert tokenizer.convert_tokens_to_ids("dog") == int(saved["bert_ids"]["dog"])
    assert tokenizer("Cat").input_ids[1] == int(saved["bert_ids"]["cat"])
    assert tokenizer.convert_tokens_to_ids("[DEC]") == len(tiny_bert_vocab())
    assert len(tokenizer) == sampler.subject_encoder.embeddings.word_embeddings.num_embeddings
    clip_vocab = tiny_clip_vocab()[0]
    assert sampler.tokenizer("a dog").input_ids[:2] == [clip_vocab["<|startoftext|>"], clip_vocab["a</w>"]]
    assert sampler.ctx_begin_pos == 2 and sampler.preprocess.size == 28
    assert sampler.preprocess.mean == CLIP_MEAN and sampler.preprocess.crop == "center"
    assert type(sampler.scheduler).__name__ == "PNDMScheduler" and sampler.scheduler.config.skip_prk_steps
    image = sampler(prompt=build_prompt("a dog on the beach", None), references=[_image((40, 40, 200))],
                    subject="dog", negative_prompt=NEGATIVE_PROMPT, num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(0))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_loads_in_bfloat16(official, no_network):
    """The dtype CUDA runs use (``--dtype auto``): every network in bf16, sampling still gives an 8-bit image."""
    root, _ = official
    sampler = load_sampler(root / "blipdiffusion", root / "bert-base-uncased", dtype=torch.bfloat16)
    for module in (sampler.subject_encoder, sampler.text_encoder, sampler.unet, sampler.vae):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    image = sampler(prompt="a dog", references=[_image((40, 40, 200))], subject="dog", num_inference_steps=1,
                    height=64, width=64, generator=torch.Generator().manual_seed(0))
    assert image.size == (64, 64) and np.asarray(image).std() > 0


def test_weights_resolve_from_weights_dir(official, no_network):
    root, _ = official
    spec = get_method(METHOD)
    options = spec.parse_options({"stage": "1"})
    resolved = check_weights(spec.weight_specs(options, MethodContext()), WeightsConfig(weights_dir=root))
    assert resolved["blip_diffusion"].path == root / "blipdiffusion"
    assert resolved["qformer_tokenizer"].path == root / "bert-base-uncased"


def test_broken_checkpoints_raise_naming_the_file(official, tmp_path):
    root, saved = official
    folder = tmp_path / "qformer"
    shutil.copytree(root / "blipdiffusion" / "qformer", folder)
    weights = folder / "pytorch_model.bin"

    torch.save({k: v for k, v in saved["qformer"].items() if k != "query_tokens"}, weights)
    with pytest.raises(WeightsLoadError, match=r"pytorch_model\.bin.*1 missing key.*query_tokens"):
        load_subject_encoder(folder)
    torch.save({**saved["qformer"], "encoder.layer.9.extra": torch.zeros(1)}, weights)
    with pytest.raises(WeightsLoadError, match=r"pytorch_model\.bin.*unexpected key.*encoder\.layer\.9\.extra"):
        load_subject_encoder(folder)
    torch.save({**saved["qformer"], "query_tokens": torch.zeros(1, 5, 32)}, weights)
    with pytest.raises(WeightsLoadError, match=r"pytorch_model\.bin.*query_tokens"):
        load_subject_encoder(folder)
    torch.save({"tensors": saved["qformer"], "meta": Path("x")}, weights)  # a pickle that needs full unpickling
    with pytest.raises(WeightsLoadError, match=r"pytorch_model\.bin.*weights_only"):
        load_subject_encoder(folder)
    weights.unlink()
    with pytest.raises(WeightsLoadError, match="no weights file"):
        load_subject_encoder(folder)

    with pytest.raises(WeightsLoadError, match="no BERT tokenizer"):
        load_qformer_tokenizer(tmp_path)
    with pytest.raises(WeightsLoadError, match=r"tokens .*Q-Former"):
        load_qformer_tokenizer(root / "bert-base-uncased", vocab_size=10)


# ----------------------------------------------------------------------------------------------- sampling


def _sample(sampler, reference, subject="dog", seed=0, prompt="a dog on the beach", guidance=7.5):
    image = sampler(prompt=build_prompt(prompt, None), references=[reference], subject=subject,
                    negative_prompt=NEGATIVE_PROMPT, guidance_scale=guidance, num_inference_steps=2, height=64,
                    width=64, generator=torch.Generator().manual_seed(seed))
    return np.asarray(image, dtype=np.int16)


def test_sampler_is_deterministic_and_conditioned(tiny):
    red, blue = _image((200, 30, 30)), _image((30, 30, 200), seed=1)
    first = _sample(tiny, red)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, _sample(tiny, red))
    assert not np.array_equal(first, _sample(tiny, red, seed=1))
    # the reference image and the subject word both reach the subject embeddings, and through them the image
    assert (tiny.subject_embeddings([red], "dog") - tiny.subject_embeddings([blue], "dog")).abs().max() > 1e-3
    assert (tiny.subject_embeddings([red], "dog") - tiny.subject_embeddings([red], "cat")).abs().max() > 1e-3
    assert not np.array_equal(first, _sample(tiny, blue))
    assert not np.array_equal(first, _sample(tiny, red, subject="cat"))
    assert not np.array_equal(first, _sample(tiny, red, prompt="a dog in the snow"))
    unguided = _sample(tiny, red, guidance=1.0)
    assert unguided.shape == (64, 64, 3) and not np.array_equal(first, unguided)
    each = [tiny.subject_embeddings([image], "dog") for image in (red, blue)]
    torch.testing.assert_close(tiny.subject_embeddings([red, blue], "dog"), (each[0] + each[1]) / 2)


def test_personalizer_reference_choice():
    red, blue = _image((200, 30, 30)), _image((30, 30, 200), seed=1)
    context = MethodContext(preset="tiny")
    first = BlipDiffusionPersonalizer(BlipDiffusionOptions(steps=2), context)
    assert first.random_weights and first.config()["steps"] == 2 and first.config()["height"] == 64
    one = np.asarray(first.personalize([red], "a dog on the beach", "dog", 3))
    assert np.array_equal(one, np.asarray(first.personalize([red, blue], "a dog on the beach", "dog", 3)))
    mean = BlipDiffusionPersonalizer(BlipDiffusionOptions(steps=2, reference="mean"), context)
    assert not np.array_equal(one, np.asarray(mean.personalize([red, blue], "a dog on the beach", "dog", 3)))
    with pytest.raises(ValueError, match="reference"):
        first.personalize([], "a dog", "dog", 0)


# ----------------------------------------------------------------------------------- registration, options


def test_registration_metadata():
    spec = get_method(METHOD)
    options = spec.parse_options({})
    assert spec.kind == "two-stage" and spec.presets == ("tiny",)
    assert "BLIP-Diffusion" in spec.description
    assert spec.paper(options).table1_row == "BLIP-Diffusion"
    table = Path(__file__).resolve().parents[1] / "videobench" / "paper" / "table1.csv"
    with table.open() as handle:
        assert "BLIP-Diffusion" in {row["method"] for row in csv.DictReader(handle)}
    assert (options.steps, options.guidance, options.prompt_reps, options.prompt_strength) == (50, 7.5, 20, 1.0)
    assert (options.height, options.width, options.reference) == (512, 512, "first")
    assert options.negative_prompt == NEGATIVE_PROMPT

    specs = {s.key: s for s in spec.weight_specs(options, MethodContext())}
    assert set(specs) == {"blip_diffusion", "qformer_tokenizer", "i2v"}
    blip, bert = specs["blip_diffusion"], specs["qformer_tokenizer"]
    assert blip.folder and blip.hf_repo == BLIP_DIFFUSION_REPO and "qformer/" in blip.layout
    assert not any(pattern.startswith(("controlnet", "vision_encoder")) for pattern in blip.hf_files)
    assert bert.folder and bert.hf_repo == BERT_TOKENIZER_REPO and bert.layout == ("vocab.txt",)
    assert {s.key for s in spec.weight_specs(spec.parse_options({"stage": "1"}), MethodContext())} == \
        {"blip_diffusion", "qformer_tokenizer"}
    assert {s.key for s in spec.weight_specs(spec.parse_options({"stage": "2"}), MethodContext())} == {"i2v"}
    assert spec.weight_specs(options, MethodContext(preset="tiny")) == []
    explicit = spec.parse_options({"model": "/m", "qformer_tokenizer": "/t"})
    assert [s.explicit for s in spec.weight_specs(explicit, MethodContext())][:2] == ["/m", "/t"]


@pytest.mark.parametrize(("raw", "message"), [  # the cross-field rules (types and bounds: tests/test_contract.py)
    ({"height": "500"}, "multiples of 8"),
    ({"prompt_strength": "0.01"}, "drop the prompt"),
])
def test_option_validation(raw, message):
    with pytest.raises(OptionError, match=message):
        get_method(METHOD).parse_options(raw)


def test_tiny_preset_stage_1(tmp_path):
    """The tiny stage 1's own settings (the whole tiny run, its determinism and cost: tests/test_contract.py)."""
    spec = get_method(METHOD)
    _image((200, 30, 30), size=(64, 64)).save(tmp_path / "00.png")
    case = Case(case_id="red_circle-p01", suite="smoke", subject="red_circle", entity="circle",
                prompt="a red circle bouncing from left to right across a white background",
                references=(str(tmp_path / "00.png"),))
    generator = spec.factory(spec.parse_options({"steps": "2", "i2v_steps": "2"}), MethodContext(preset="tiny"))
    assert generator.run_name == "blip-diffusion+i2v-tiny"
    assert generator.config()["options"]["steps"] == 2
    image = generator.generate_image(case, seed=0)
    assert image.size == (64, 64) and image.mode == "RGB"


@pytest.mark.parametrize(("stated", "expected"), [(None, 1e-5), (1e-6, 1e-6)])
def test_vision_layer_norm_eps_is_lavis_unless_the_config_states_one(tmp_path, stated, expected):
    """Salesforce/blipdiffusion's qformer/config.json omits the vision ``layer_norm_eps``; LAVIS trained with 1e-5
    (transformers' Blip2VisionConfig default is 1e-6). A config that states a value keeps it."""
    import json

    from safetensors.torch import save_file

    blip2, _ = tiny_configs(len(tiny_bert_vocab()) + 1, 8)
    folder = tmp_path / "qformer"
    blip2.save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["vision_config"].pop("layer_norm_eps", None)
    if stated is not None:
        raw["vision_config"]["layer_norm_eps"] = stated
    (folder / "config.json").write_text(json.dumps(raw))
    save_file(BlipSubjectEncoder(blip2).state_dict(), str(folder / "model.safetensors"))
    encoder = load_subject_encoder(folder)
    vision_norms = [module.eps for name, module in encoder.named_modules()
                    if isinstance(module, torch.nn.LayerNorm) and name.startswith("visual_encoder")]
    assert vision_norms and set(vision_norms) == {expected}
