"""ssr-encoder+i2v: SSR-Encoder's port (aligner, subject encoder, attention processor), its official checkpoint
layouts and loaders, the stage-1 personaliser and the registered two-stage method (tiny sizes only)."""

from __future__ import annotations

import argparse
import json
import math
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import baselines  # noqa: F401  (registers the methods)
from baselines import ssr_encoder as ssr
from baselines.ssr_encoder_model import (
    NUM_SCALES,
    AlignerConfig,
    SSRAttnProcessor,
    TokenToPatchAligner,
    clip_pixels,
    install_ssr_processors,
    load_aligner,
    load_ssr_layers,
    select_scales,
    set_ssr_scale,
    ssr_processor_indices,
)
from baselines.two_stage import TwoStageGenerator
from tests.numerics import chain_tolerance
from videobench.cases import Case
from videobench.methods import MethodContext, get_method
from videobench.options import OptionError
from videobench.weights import ResolvedWeights, WeightsLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

METHOD = "ssr-encoder+i2v"

#: The official aligner checkpoint (models/ssr_model/pytorch_model.bin), from upstream's ``Aligner``: a diffusers
#: ``Attention(query_dim=768, cross_attention_dim=1024, heads=8, dim_head=64)`` without to_v/to_out, whose
#: ``AlignerAttnProcessor(query_dim=768, inner_dim=512, cross_attention_dim=1024)`` holds 6 value/out projections.
OFFICIAL_ALIGNER_LAYOUT = {
    "aligner.to_q.weight": (512, 768),
    "aligner.to_k.weight": (512, 1024),
    **{f"aligner.processor.to_v.{k}.weight": (512, 1024) for k in range(6)},
    **{f"aligner.processor.to_out.{k}.weight": (768, 512) for k in range(6)},
    "norm.weight": (768,),
    "norm.bias": (768,),
}
#: The official subject layers (models/ssr_model/pytorch_model_1.bin): SD 1.5's 16 cross-attentions at odd
#: positions of ``unet.attn_processors``, with their hidden sizes.
OFFICIAL_LAYER_WIDTHS = dict(zip(range(1, 32, 2), (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280,
                                                   640, 640, 640, 320, 320, 320, 1280)))
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


def _image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.fixture(scope="module")
def tiny_personalizer():
    return ssr.build_ssr_encoder(ssr.SSREncoderOptions(), MethodContext(preset="tiny"))


# ------------------------------------------------------------------------------------------ registration


def test_registration_metadata_and_weights():
    spec = get_method(METHOD)
    assert spec.kind == "two-stage" and spec.presets == ("tiny",)
    options = spec.parse_options({})
    assert spec.paper(options).table1_row == "SSR-Encoder"
    from importlib.resources import files
    rows = files("videobench").joinpath("paper/table1.csv").read_text().splitlines()
    assert any(line.split(",")[1] == "SSR-Encoder" for line in rows[1:])

    specs = {weight.key: weight for weight in spec.weight_specs(options, MethodContext())}
    assert list(specs) == ["sd15", "clip_vit_l14", "ssr_aligner", "ssr_layers", "i2v"]
    assert specs["sd15"].folder and specs["sd15"].hf_repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert specs["clip_vit_l14"].folder and specs["clip_vit_l14"].hf_repo == "openai/clip-vit-large-patch14"
    for key in ("ssr_aligner", "ssr_layers"):  # published only in upstream README's Google Drive folder
        assert specs[key].hf_repo is None and specs[key].url is None
        assert "drive.google.com/drive/folders/1pMwzGRA8QzHjEH5Hc4zDwdsSDwjwQKMW" in specs[key].model
    assert not specs["ssr_aligner"].folder and "ssr_model/pytorch_model.bin" in specs["ssr_aligner"].file_names

    explicit = spec.parse_options({"aligner": "/x/a.safetensors", "base_model": "me/sd15"})
    specs = {weight.key: weight for weight in spec.weight_specs(explicit, MethodContext())}
    assert specs["ssr_aligner"].explicit == "/x/a.safetensors" and specs["sd15"].explicit == "me/sd15"
    assert [w.key for w in spec.weight_specs(spec.parse_options({"stage": "2"}), MethodContext())] == ["i2v"]
    assert spec.weight_specs(options, MethodContext(preset="tiny")) == []

    defaults = spec.metadata(options)["options"]
    assert (defaults["scale"], defaults["steps"], defaults["guidance"]) == (0.65, 30, 5.0)
    assert (defaults["negative_prompt"], defaults["height"], defaults["width"]) == ("bad quality", 512, 512)


@pytest.mark.parametrize("raw, fragment", [  # the rules beyond types and bounds (those: tests/test_contract.py)
    ({"height": "500"}, "multiples of 8"),
])
def test_option_errors(raw, fragment):
    with pytest.raises(OptionError, match=fragment):
        get_method(METHOD).parse_options(raw)


# ------------------------------------------------------------------------------------------ model pieces


def test_clip_pixels_match_the_pil_clip_processor():
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    if processor_class is None:  # transformers 4.x: CLIPImageProcessor is the PIL one
        processor_class = transformers.CLIPImageProcessor
    for image, size in ((_image(0, (300, 200)), 224), (_image(1, (50, 90)), 32)):
        expected = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})(
            images=image, return_tensors="pt").pixel_values
        assert torch.allclose(clip_pixels([image], size), expected, atol=1e-5)


def test_select_scales_is_upstreams_every_fourth_layer():
    states = tuple(torch.full((1,), float(i)) for i in range(25))  # embeddings + 24 layers (ViT-L/14)
    assert [int(t) for t in select_scales(states)] == [4, 8, 12, 16, 20, 24]
    assert [int(t) for t in select_scales(states[:7])] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="evenly spaced"):
        select_scales(states[:8])


def test_official_aligner_layout():
    with torch.device("meta"):
        aligner = TokenToPatchAligner(AlignerConfig())
    assert {key: tuple(value.shape) for key, value in aligner.state_dict().items()} == OFFICIAL_ALIGNER_LAYOUT


def test_sd15_processor_indices_and_widths():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    processors = install_ssr_processors(unet, text_context_len=77)
    assert list(processors) == list(OFFICIAL_LAYER_WIDTHS)
    assert ssr_processor_indices(unet) == {i: n for i, n in enumerate(unet.attn_processors) if "attn2" in n}
    for index, processor in processors.items():
        for layer in (processor.to_k_SSR, processor.to_v_SSR):
            assert tuple(layer.weight.shape) == (OFFICIAL_LAYER_WIDTHS[index], 768) and layer.bias is None
    assert sum(isinstance(p, SSRAttnProcessor) for p in unet.attn_processors.values()) == 16


def _naive_aligner(aligner: TokenToPatchAligner, query: torch.Tensor, scales: list[torch.Tensor]) -> torch.Tensor:
    """Upstream's Aligner written out head by head: one softmax map from the last scale, per-scale V/out."""
    cfg, attn = aligner.config, aligner.aligner
    q, k = attn.to_q(query), attn.to_k(scales[-1])
    outputs = []
    for index, features in enumerate(scales):
        v = attn.processor.to_v[index](features)
        heads = []
        for h in range(cfg.heads):
            part = slice(h * cfg.head_dim, (h + 1) * cfg.head_dim)
            weights = torch.softmax(q[..., part] @ k[..., part].transpose(-1, -2) / math.sqrt(cfg.head_dim), -1)
            heads.append(weights @ v[..., part])
        outputs.append(attn.processor.to_out[index](torch.cat(heads, dim=-1)))
    return torch.nn.functional.layer_norm(torch.cat(outputs, dim=1), (cfg.query_dim,), aligner.norm.weight,
                                          aligner.norm.bias)


def test_aligner_matches_naive_reference():
    torch.manual_seed(0)
    aligner = TokenToPatchAligner(AlignerConfig(query_dim=12, image_dim=10, heads=2, head_dim=4))
    torch.nn.init.normal_(aligner.norm.weight)
    torch.nn.init.normal_(aligner.norm.bias)
    query = torch.randn(2, 5, 12)
    scales = [torch.randn(2, 7, 10) for _ in range(NUM_SCALES)]
    out = aligner(query, scales)
    assert out.shape == (2, NUM_SCALES * 5, 12)
    assert torch.allclose(out, _naive_aligner(aligner, query, scales), atol=1e-5)
    probs = aligner.aligner.attention_map(query, scales[-1])
    assert probs.shape == (2, 2, 5, 7) and torch.allclose(probs.sum(-1), torch.ones(2, 2, 5))
    with pytest.raises(ValueError, match="6 scales"):
        aligner(query, scales[:5])


def _naive_ssr_attention(attn, processor: SSRAttnProcessor, x, text, subject, scale: float) -> torch.Tensor:
    """Decoupled cross-attention written out per batch item and head (upstream SSRAttnProcessor)."""
    heads, width = attn.heads, attn.to_q.out_features
    d = width // heads

    def attend(query, key, value):
        out = torch.zeros_like(query)
        for b in range(query.shape[0]):
            for h in range(heads):
                part = slice(h * d, (h + 1) * d)
                logits = query[b, :, part] @ key[b, :, part].T / math.sqrt(d)
                out[b, :, part] = torch.softmax(logits, dim=-1) @ value[b, :, part]
        return out

    query = attn.to_q(x)
    mixed = attend(query, attn.to_k(text), attn.to_v(text))
    mixed = mixed + scale * attend(query, processor.to_k_SSR(subject), processor.to_v_SSR(subject))
    return attn.to_out[0](mixed)


def test_ssr_processor_matches_naive_reference_and_plain_attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    processor = SSRAttnProcessor(hidden_size=8, cross_attention_dim=6, text_context_len=5, scale=0.7)
    x, text, subject = torch.randn(2, 9, 8), torch.randn(2, 5, 6), torch.randn(2, 12, 6)
    context = torch.cat([text, subject], dim=1)
    plain = AttnProcessor2_0()(attn, x, encoder_hidden_states=text)
    attn.set_processor(processor)
    with torch.no_grad():
        assert torch.allclose(attn(x, encoder_hidden_states=context),
                              _naive_ssr_attention(attn, processor, x, text, subject, 0.7), atol=1e-5)
        # the subject tokens' contribution: linear in the scale, through to_out's weight (no bias)
        contribution = attn(x, encoder_hidden_states=context) - plain
        processor.scale = 1.4
        assert torch.allclose(attn(x, encoder_hidden_states=context) - plain, 2 * contribution, atol=1e-5)
        assert contribution.abs().max() > 1e-3
        processor.scale = 0.0
        assert torch.allclose(attn(x, encoder_hidden_states=context), plain, atol=1e-6)
        processor.scale = 0.7
        assert torch.allclose(attn(x, encoder_hidden_states=text), plain, atol=1e-6)  # no subject tokens


def test_unet_with_ssr_scale_zero_equals_plain_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ssr.TINY_UNET).eval()
    sample, text = torch.randn(1, 4, 16, 16), torch.randn(1, ssr.TINY_TEXT_LENGTH, ssr.TINY_TEXT["hidden_size"])
    subject = torch.randn(1, 3 * ssr.TINY_TEXT_LENGTH, ssr.TINY_TEXT["hidden_size"])
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=text).sample
        install_ssr_processors(unet, ssr.TINY_TEXT_LENGTH)
        set_ssr_scale(unet, 0.0)
        zero = unet(sample, 10, encoder_hidden_states=torch.cat([text, subject], 1)).sample
        set_ssr_scale(unet, 0.65)
        conditioned = unet(sample, 10, encoder_hidden_states=torch.cat([text, subject], 1)).sample
    assert torch.allclose(zero, plain, atol=1e-5)
    assert (conditioned - plain).abs().max() > 1e-4


# ---------------------------------------------------------------------------- official files, real loader


def _tiny_official_files(tmp_path, seed: int = 3):
    """A tiny SD 1.5 folder, a tiny CLIP folder (a full CLIPModel, as openai/clip-vit-large-patch14) and the two
    SSR checkpoints in the official key layouts (torch.save of plain tensor dicts, as accelerate.save_state)."""
    from transformers import CLIPConfig, CLIPModel

    pipe, _ = ssr.build_tiny_components(seed=seed)
    pipe.save_pretrained(tmp_path / "sd15")
    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(text_config={"vocab_size": 64, "hidden_size": 8, "intermediate_size": 16,
                                             "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "max_position_embeddings": 16},
                                vision_config=ssr.TINY_VISION, projection_dim=8))
    clip.save_pretrained(tmp_path / "clip")
    aligner_state = OrderedDict((key, torch.randn(value.shape)) for key, value
                                in TokenToPatchAligner(ssr.TINY_ALIGNER).state_dict().items())
    torch.save(aligner_state, tmp_path / "pytorch_model.bin")
    layers_state = OrderedDict()
    for index, name in ssr_processor_indices(pipe.unet).items():
        attn = pipe.unet.get_submodule(name.removesuffix(".processor"))
        for key in ("to_k_SSR", "to_v_SSR"):
            layers_state[f"{index}.{key}.weight"] = torch.randn(attn.to_k.out_features, attn.to_k.in_features)
    torch.save(layers_state, tmp_path / "pytorch_model_1.bin")
    return clip, aligner_state, layers_state


def _context(tmp_path, options, names=None) -> MethodContext:
    names = names or {"sd15": "sd15", "clip_vit_l14": "clip", "ssr_aligner": "pytorch_model.bin",
                      "ssr_layers": "pytorch_model_1.bin"}
    specs = {spec.key: spec for spec in ssr.ssr_weight_specs(options, MethodContext())}
    weights = {key: ResolvedWeights(specs[key], tmp_path / name, "explicit") for key, name in names.items()}
    return MethodContext(device="cpu", weights=weights)


def test_official_checkpoints_load_through_the_real_loader(tmp_path):
    clip, aligner_state, layers_state = _tiny_official_files(tmp_path)
    options = ssr.SSREncoderOptions(steps=2, height=64, width=64)
    personalizer = ssr.build_ssr_encoder(options, _context(tmp_path, options))
    assert not personalizer.random_weights

    loaded = personalizer.encoder.aligner.state_dict()
    assert set(loaded) == set(aligner_state)
    for key, value in aligner_state.items():
        assert torch.equal(loaded[key], value), key
    processors = {index: personalizer.pipe.unet.attn_processors[name]
                  for index, name in ssr_processor_indices(personalizer.pipe.unet).items()}
    assert sorted(processors) == [1, 3, 5, 7]
    for key, value in layers_state.items():
        index, name = key.split(".", 1)
        assert torch.equal(processors[int(index)].state_dict()[name], value), key
    vision = dict(clip.named_parameters())
    for key, value in personalizer.encoder.image_encoder.named_parameters():
        assert torch.equal(value, vision[f"vision_model.{key}"]), key
    pixels = clip_pixels([_image(0)], personalizer.encoder.image_size)
    with torch.no_grad():  # the last scale (upstream's key) is the vision tower's last hidden state
        assert torch.allclose(personalizer.encoder.scale_features(pixels)[-1],
                              clip.vision_model(pixel_values=pixels).last_hidden_state, atol=1e-5)
    scheduler = personalizer.pipe.scheduler
    assert type(scheduler).__name__ == "UniPCMultistepScheduler" and scheduler.config.final_sigmas_type == "sigma_min"

    config = personalizer.config()
    assert config["aligner"].endswith("pytorch_model.bin") and config["steps"] == 2
    json.dumps(config)
    image = personalizer.personalize([_image(0)], "a dog on the beach", "dog", seed=5)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(personalizer.personalize([_image(0)], "a dog on the beach",
                                                                                 "dog", seed=5)))


def test_safetensors_conversion_loads_the_same(tmp_path):
    from safetensors.torch import save_file

    state = OrderedDict((key, torch.randn(value.shape)) for key, value
                        in TokenToPatchAligner(ssr.TINY_ALIGNER).state_dict().items())
    torch.save(OrderedDict((f"module.{key}", value) for key, value in state.items()), tmp_path / "ddp.bin")
    save_file(dict(state), str(tmp_path / "ssr_aligner.safetensors"))
    for name in ("ddp.bin", "ssr_aligner.safetensors"):
        aligner = load_aligner(tmp_path / name, ssr.TINY_ALIGNER)
        assert all(torch.equal(aligner.state_dict()[key], value) for key, value in state.items())


def test_wrong_checkpoints_raise_naming_the_file(tmp_path):
    state = TokenToPatchAligner(ssr.TINY_ALIGNER).state_dict()
    missing = {key: value for key, value in state.items() if key != "norm.bias"}
    torch.save(missing, tmp_path / "missing.bin")
    with pytest.raises(WeightsLoadError, match=r"missing\.bin.*1 missing key.*norm\.bias"):
        load_aligner(tmp_path / "missing.bin", ssr.TINY_ALIGNER)
    torch.save({**state, "aligner.to_q.weight": torch.zeros(3, 3)}, tmp_path / "shape.bin")
    with pytest.raises(WeightsLoadError, match=r"shape\.bin"):
        load_aligner(tmp_path / "shape.bin", ssr.TINY_ALIGNER)
    with pytest.raises(WeightsLoadError, match=r"missing\.bin"):  # the aligner file given as the layers file
        load_ssr_layers({1: SSRAttnProcessor(8, 6)}, tmp_path / "missing.bin")

    processors = {1: SSRAttnProcessor(8, 6), 3: SSRAttnProcessor(8, 6)}
    layers = {f"{i}.{name}.weight": torch.randn(8, 6) for i in (1, 3) for name in ("to_k_SSR", "to_v_SSR")}
    torch.save({**layers, "5.to_k_SSR.weight": torch.randn(8, 6)}, tmp_path / "extra.bin")
    with pytest.raises(WeightsLoadError, match=r"extra\.bin.*indices 1, 3.*1 unexpected key.*5\.to_k_SSR"):
        load_ssr_layers(processors, tmp_path / "extra.bin")
    torch.save({key: value for key, value in layers.items() if key != "3.to_v_SSR.weight"}, tmp_path / "few.bin")
    with pytest.raises(WeightsLoadError, match=r"few\.bin.*1 missing key.*3\.to_v_SSR"):
        load_ssr_layers(processors, tmp_path / "few.bin")
    torch.save({**layers, "3.to_v_SSR.weight": torch.randn(8, 7)}, tmp_path / "wide.bin")
    with pytest.raises(WeightsLoadError, match=r"wide\.bin \[layer 3\]"):
        load_ssr_layers(processors, tmp_path / "wide.bin")
    torch.save(layers, tmp_path / "ok.bin")
    load_ssr_layers(processors, tmp_path / "ok.bin")
    assert torch.equal(processors[3].to_v_SSR.weight, layers["3.to_v_SSR.weight"])


def test_pickle_that_needs_full_unpickling_is_refused_with_a_recipe(tmp_path):
    state = dict(TokenToPatchAligner(ssr.TINY_ALIGNER).state_dict())
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.bin")
    with pytest.raises(WeightsLoadError, match=r"pickled\.bin.*weights_only.*(?s:.*)safetensors"):
        load_aligner(tmp_path / "pickled.bin", ssr.TINY_ALIGNER)


def test_missing_resolution_is_reported(tmp_path):
    options = ssr.SSREncoderOptions()
    context = _context(tmp_path, options, {"sd15": "sd15"})
    with pytest.raises(RuntimeError, match="clip_vit_l14, ssr_aligner, ssr_layers"):
        ssr.load_official_components(context, torch.float32)


# ------------------------------------------------------------------------------------ the personaliser


def test_personalizer_is_deterministic_and_conditioned(tiny_personalizer):
    prompt = "a dog running on the beach"
    base = tiny_personalizer.personalize([_image(0)], prompt, "dog", seed=0)
    assert base.size == (ssr.TINY_IMAGE_SIZE, ssr.TINY_IMAGE_SIZE) and base.mode == "RGB"
    assert _diff(base, tiny_personalizer.personalize([_image(0)], prompt, "dog", seed=0)) == 0.0
    assert _diff(base, tiny_personalizer.personalize([_image(1)], prompt, "dog", seed=0)) > 0.0  # the reference
    assert _diff(base, tiny_personalizer.personalize([_image(0)], prompt, "cat", seed=0)) > 0.0  # the entity
    assert _diff(base, tiny_personalizer.personalize([_image(0)], prompt, "dog", seed=1)) > 0.0  # the seed
    assert _diff(base, tiny_personalizer.personalize([_image(0), _image(1)], prompt, "dog", seed=0)) == 0.0


def test_scale_zero_ignores_the_reference(tiny_personalizer):
    personalizer = tiny_personalizer
    original = personalizer.options
    personalizer.options = replace(original, scale=0.0)
    try:
        first = personalizer.personalize([_image(0)], "a dog", "dog", seed=0)
        assert _diff(first, personalizer.personalize([_image(1)], "a dog", "cat", seed=0)) == 0.0
    finally:
        personalizer.options = original


@pytest.mark.numerics
def test_subject_tokens_of_several_references(tiny_personalizer):
    personalizer = tiny_personalizer
    with torch.no_grad():
        one, uncond_one = personalizer.subject_tokens([_image(0)], "dog")
        two, uncond_two = personalizer.subject_tokens([_image(0), _image(1)], "dog")
    per_image = NUM_SCALES * ssr.TINY_TEXT_LENGTH
    assert one.shape == (1, per_image, ssr.TINY_TEXT["hidden_size"]) and two.shape[1] == 2 * per_image
    # A batch of two images may take another GEMM blocking than a batch of one: equal up to rounding. The chain: per
    # vision layer q, k, v, q.k, weights.v, out, fc1, fc2; per aligner scale q, k, v, q.k, weights.v, out; the
    # longest sum is the aligner's inner width (heads * head_dim).
    matmuls = 8 * ssr.TINY_VISION["num_hidden_layers"] + 6
    bound = chain_tolerance(matmuls, ssr.TINY_ALIGNER.inner_dim) * float(one.abs().max())
    torch.testing.assert_close(two[:, :per_image], one, rtol=0, atol=bound)
    assert (two[:, per_image:] - one).abs().max() > 100 * bound  # the second image's tokens are its own
    torch.testing.assert_close(uncond_two, uncond_one.repeat(1, 2, 1), rtol=0, atol=bound)  # zero image, empty query


def test_tiny_preset_stage_1_with_several_references(tmp_path):
    """The tiny stage 1 on 2 of 3 references (the whole tiny run, its determinism and cost: tests/test_contract.py)."""
    spec = get_method(METHOD)
    options = spec.parse_options({"num_references": "2"})
    generator = spec.factory(options, MethodContext(preset="tiny"))
    assert isinstance(generator, TwoStageGenerator)
    references = []
    for index in range(3):
        path = tmp_path / f"ref{index}.png"
        _image(index, (40, 56)).save(path)
        references.append(str(path))
    case = Case("dog-0", "smoke", "dog", "a dog running on the beach", "dog", tuple(references))
    image = generator.generate_image(case, seed=0)
    assert image.mode == "RGB" and image.size == (ssr.TINY_IMAGE_SIZE, ssr.TINY_IMAGE_SIZE)
    assert generator.stage1.config()["num_references"] == 2
    config = generator.config()
    assert config["method"] == METHOD and config["options"]["scale"] == 0.65
