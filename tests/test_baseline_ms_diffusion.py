"""ms-diffusion+i2v: MS-Diffusion's resampler, box-masked cross-attention, ms_adapter.bin loading and the tiny preset.

Tiny random components only; the official layouts are checked on the meta device or at tiny sizes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from baselines import ms_diffusion as msd
from baselines import ms_diffusion_model as msm
from baselines.two_stage import TwoStageGenerator
from videobench.cases import Case
from videobench.methods import MethodContext, get_method
from videobench.options import OptionError
from videobench.weights import WeightsConfig, WeightsLoadError, check_weights

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "best quality, high quality, a dog on the beach"


def random_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def tiny() -> msm.MSDiffusionPipeline:
    return msd.build_tiny_ms_diffusion(seed=0)


# --------------------------------------------------------------------------------------------- the resampler


def test_fourier_box_embedding_known_values():
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9]], dtype=torch.float64)
    embedding = msm.FourierBoxEmbedding(num_freqs=8, temperature=100)(box)
    assert embedding.shape == (1, 64)
    for k in range(8):  # frequency-major, sin then cos, four coordinates each (upstream's permute order)
        frequency = torch.tensor(100 ** (k / 8), dtype=torch.float32).double()  # a float32 buffer upstream
        sin, cos = embedding[0, 8 * k: 8 * k + 4], embedding[0, 8 * k + 4: 8 * k + 8]
        torch.testing.assert_close(sin, torch.sin(box[0] * frequency))
        torch.testing.assert_close(cos, torch.cos(box[0] * frequency))


def test_perceiver_attention_equals_naive_attention():
    torch.manual_seed(0)
    layer = msm.PerceiverAttention(dim=12, dim_head=4, heads=3)
    features, latents = torch.randn(2, 7, 12), torch.randn(2, 5, 12)
    x, lat = layer.norm1(features), layer.norm2(latents)
    q = layer.to_q(lat)
    k, v = layer.to_kv(torch.cat((x, lat), dim=1)).chunk(2, dim=-1)
    expected = torch.zeros(2, 5, 12)
    for h in range(3):
        part = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(4), dim=-1)
        expected[..., part] = weights @ v[..., part]
    torch.testing.assert_close(layer(features, latents), layer.to_out(expected))


def official_image_proj_shapes() -> dict[str, tuple[int, ...]]:
    """``image_proj`` of the released checkpoint, from upstream ``inference.py``: ``Resampler(dim=1280, depth=4,
    dim_head=64, heads=20, num_queries=16, embedding_dim=1664, output_dim=2048, ff_mult=4,
    latent_init_mode="grounding", phrase_embeddings_dim=768)`` (fourier_freqs=8: 768 + 8 * 2 * 4 = 832)."""
    shapes: dict[str, tuple[int, ...]] = {
        "grounding_latents": (1, 16, 1280),
        "latent_proj.0.weight": (1664, 832), "latent_proj.0.bias": (1664,),
        "latent_proj.2.weight": (1280 * 16, 1664), "latent_proj.2.bias": (1280 * 16,),
        "latent_norm.weight": (1280,), "latent_norm.bias": (1280,),
        "proj_in.weight": (1280, 1664), "proj_in.bias": (1280,),
        "attention_norm.weight": (1280,), "attention_norm.bias": (1280,),
        "proj_out.weight": (2048, 1280), "proj_out.bias": (2048,),
        "norm_out.weight": (2048,), "norm_out.bias": (2048,),
    }
    for i in range(4):
        for norm in ("norm1", "norm2"):
            shapes[f"layers.{i}.0.{norm}.weight"] = shapes[f"layers.{i}.0.{norm}.bias"] = (1280,)
        shapes[f"layers.{i}.0.to_q.weight"] = (1280, 1280)
        shapes[f"layers.{i}.0.to_kv.weight"] = (2560, 1280)
        shapes[f"layers.{i}.0.to_out.weight"] = (1280, 1280)
        shapes[f"layers.{i}.1.0.weight"] = shapes[f"layers.{i}.1.0.bias"] = (1280,)
        shapes[f"layers.{i}.1.1.weight"] = (5120, 1280)
        shapes[f"layers.{i}.1.3.weight"] = (1280, 5120)
    return shapes


def test_resampler_real_size_matches_the_official_layout():
    with torch.device("meta"):
        resampler = msm.GroundingResampler(msd.OFFICIAL_ADAPTER)
        image_embeds, phrases, boxes = torch.empty(2, 257, 1664), torch.empty(2, 768), torch.empty(2, 4)
        tokens = resampler(image_embeds, phrases, boxes)
    assert {k: tuple(v.shape) for k, v in resampler.state_dict().items()} == official_image_proj_shapes()
    assert tokens.shape == (2, 16, 2048)  # 16 tokens per subject, SDXL's cross-attention width


def test_resampler_grounding_and_drop():
    torch.manual_seed(0)
    resampler = msm.GroundingResampler(msd.TINY_ADAPTER).eval()
    image = torch.randn(3, 17, 32)
    phrase = torch.randn(3, 32)
    box_a = torch.tensor([[0.25, 0.25, 0.75, 0.75]] * 3)
    box_b = torch.tensor([[0.0, 0.1, 0.5, 0.9]] * 3)
    with torch.no_grad():
        out_a, out_b = resampler(image, phrase, box_a), resampler(image, phrase, box_b)
        assert out_a.shape == (3, 4, 64)
        assert not torch.allclose(out_a, out_b)  # the box grounds the queries
        drop = torch.tensor([True, False, True])
        dropped_a, dropped_b = resampler(image, phrase, box_a, drop), resampler(image, phrase, box_b, drop)
        torch.testing.assert_close(dropped_a[drop], dropped_b[drop])  # learned queries: the box no longer counts
        torch.testing.assert_close(dropped_a[~drop], out_a[~drop])
        torch.testing.assert_close(resampler.grounding_queries(phrase, box_a, drop)[0],
                                   resampler.grounding_latents[0])


# -------------------------------------------------------------------------------- box-masked cross-attention


def test_box_region_masks_known_answer():
    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.1, 0.0, 0.3, 0.8]]])
    region = msm.box_region_masks(boxes, grid=4)  # (1, 16, 2)
    first = region[0, :, 0].view(4, 4).int()
    second = region[0, :, 1].view(4, 4).int()
    assert first.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    # x: columns floor(0.4)=0 .. ceil(1.2)=2 (exclusive); y: rows 0 .. ceil(3.2)=4 (exclusive); row-major positions
    assert second.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]


def naive_ms_attention(attn, processor, hidden, encoder, boxes, grid):
    """Dense loop reference: per position, text attention plus scale * attention over the tokens of the subjects
    whose boxes contain it (nothing where no box does), then ``to_out``."""
    text_len, n_dummy, n_tok = processor.text_tokens, processor.num_dummy_tokens, processor.num_tokens
    heads = attn.heads
    q = attn.to_q(hidden)
    k, v = attn.to_k(encoder[:, :text_len]), attn.to_v(encoder[:, :text_len])
    ik, iv = processor.to_k_ip(encoder[:, text_len:]), processor.to_v_ip(encoder[:, text_len:])
    d = q.shape[-1] // heads
    out = torch.zeros_like(q)
    for b in range(hidden.shape[0]):
        for p in range(hidden.shape[1]):
            row, col = divmod(p, grid)
            allowed = []
            for r, (x1, y1, x2, y2) in enumerate(boxes[b].tolist()):
                if math.floor(x1 * grid) <= col < math.ceil(x2 * grid) and math.floor(y1 * grid) <= row < math.ceil(
                        y2 * grid):
                    allowed += range(n_dummy + r * n_tok, n_dummy + (r + 1) * n_tok)
            for h in range(heads):
                part = slice(h * d, (h + 1) * d)
                weights = torch.softmax(k[b, :, part] @ q[b, p, part] / math.sqrt(d), dim=0)
                value = weights @ v[b, :, part]
                if allowed:
                    ip_weights = torch.softmax(ik[b, allowed, part] @ q[b, p, part] / math.sqrt(d), dim=0)
                    value = value + processor.scale * (ip_weights @ iv[b, allowed, part])
                out[b, p, part] = value
    return attn.to_out[1](attn.to_out[0](out))


@pytest.fixture
def attention_layer():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=24, heads=2, dim_head=8).eval()
    processor = msm.MSCrossAttnProcessor(16, 24, num_tokens=3, num_dummy_tokens=2, text_tokens=5, scale=0.7)
    attn.set_processor(processor)
    grid = 4
    hidden = torch.randn(2, grid * grid, 16)
    encoder = torch.randn(2, 5 + 2 + 2 * 3, 24)  # text, dummy, two subjects
    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.5, 0.0, 1.0, 0.6]],  # overlapping boxes
                          [[0.0, 0.2, 0.3, 1.0], [0.0, 0.0, 0.0, 0.0]]])  # a tall box and an empty one
    return attn, processor, hidden, encoder, boxes, grid


def test_cross_attention_equals_dense_reference(attention_layer):
    attn, processor, hidden, encoder, boxes, grid = attention_layer
    with torch.no_grad():
        got = attn(hidden, encoder_hidden_states=encoder, boxes=boxes)
        expected = naive_ms_attention(attn, processor, hidden, encoder, boxes, grid)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_known_answers(attention_layer):
    """Outside the boxes the image tokens add nothing; inside they add ``scale`` times their attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn, processor, hidden, encoder, boxes, grid = attention_layer
    with torch.no_grad():
        got = attn(hidden, encoder_hidden_states=encoder, boxes=boxes)
        attn.set_processor(AttnProcessor2_0())
        text_only = attn(hidden, encoder_hidden_states=encoder[:, :5])
        attn.set_processor(processor)
        processor.scale = 1.4
        doubled = attn(hidden, encoder_hidden_states=encoder, boxes=boxes)
    inside = msm.box_region_masks(boxes, grid).any(dim=-1)  # (B, Lq)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(got[~inside], text_only[~inside])
    assert not torch.allclose(got[inside], text_only[inside])
    # to_out is affine: the image contribution scales linearly with ``scale``
    torch.testing.assert_close(doubled - text_only, 2 * (got - text_only), atol=1e-5, rtol=1e-4)


def test_cross_attention_errors(attention_layer):
    attn, _, hidden, encoder, boxes, _ = attention_layer
    with pytest.raises(ValueError, match="boxes"):
        attn(hidden, encoder_hidden_states=encoder)
    with pytest.raises(ValueError, match="encoder tokens"):
        attn(hidden, encoder_hidden_states=encoder[:, :-1], boxes=boxes)
    with pytest.raises(ValueError, match="square"):
        attn(hidden[:, :12], encoder_hidden_states=encoder, boxes=boxes)


def test_auto_layout_guidance_switches_to_text_maps(attention_layer):
    attn, processor, hidden, encoder, boxes, grid = attention_layer
    phrase_idxes = torch.tensor([[[1, 3], [3, 4]], [[2, 3], [0, 0]]])
    with torch.no_grad():
        box_only = attn(hidden, encoder_hidden_states=encoder, boxes=boxes)
        processor.configure(processor.scale, mask_threshold=0.5, start_step=2)
        first = attn(hidden, encoder_hidden_states=encoder, boxes=boxes, phrase_idxes=phrase_idxes)
        second = attn(hidden, encoder_hidden_states=encoder, boxes=boxes, phrase_idxes=phrase_idxes)
    assert len(processor.text_maps) == 2
    torch.testing.assert_close(first, box_only)  # before start_step: the boxes
    # from start_step on: the regions are the thresholded, min-max-normalised mean phrase maps
    maps = torch.stack(processor.text_maps).mean(0)
    normalised = (maps - maps.amin(-1, keepdim=True)) / (maps.amax(-1, keepdim=True) - maps.amin(-1, keepdim=True)
                                                         + 1e-5)
    region, _ = processor._regions(boxes, grid * grid)
    torch.testing.assert_close(region, (normalised > 0.5).transpose(1, 2))
    assert not region[1, :, 1].any()  # subject 2 of sample 2 has no phrase: no region
    assert not torch.allclose(second, box_only)
    with torch.no_grad():  # the recorded map of sample 1, subject 1: mean over heads and tokens 1..2
        q = attn.to_q(hidden)[0].view(16, 2, 8).transpose(0, 1)
        k = attn.to_k(encoder[0, :5]).view(5, 2, 8).transpose(0, 1)
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
        torch.testing.assert_close(processor.text_maps[0][0, 0], probs[:, :, 1:3].mean(-1).mean(0))
    processor.configure(0.7)
    assert processor.text_maps == [] and processor.mask_threshold is None


def test_unet_with_scale_zero_is_plain_sdxl():
    """Installed into an SDXL-structured UNet at scale 0, the processors give exactly the text-only UNet."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    plain = UNet2DConditionModel(**msd.TINY_UNET).eval()
    patched = UNet2DConditionModel(**msd.TINY_UNET).eval()
    patched.load_state_dict(plain.state_dict())
    processors = msm.install_ms_attention(patched, msd.TINY_ADAPTER, text_tokens=77)
    assert len(processors) == 8 and all(name.endswith("attn2.processor") for name in processors)
    torch.manual_seed(0)
    latents, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 64)
    image_tokens = torch.randn(2, 4 + 4, 64)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.75]]] * 2)
    with torch.no_grad():
        expected = plain(latents, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        for processor in processors.values():
            processor.configure(0.0)
        at_zero = patched(latents, 500, encoder_hidden_states=torch.cat((text, image_tokens), 1),
                          added_cond_kwargs=added, cross_attention_kwargs={"boxes": boxes}).sample
        for processor in processors.values():
            processor.configure(0.6)
        at_scale = patched(latents, 500, encoder_hidden_states=torch.cat((text, image_tokens), 1),
                           added_cond_kwargs=added, cross_attention_kwargs={"boxes": boxes}).sample
    torch.testing.assert_close(at_zero, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(at_scale, expected, atol=1e-4)


def sdxl_unet_on_meta():
    from diffusers import UNet2DConditionModel

    config = {"sample_size": 128, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              "block_out_channels": (320, 640, 1280), "layers_per_block": 2, "transformer_layers_per_block": (1, 2, 10),
              "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
              "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816}  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def test_sdxl_adapter_key_layout_on_meta():
    """The ms_adapter keys of SDXL: the odd indices 1..139 of its 140 processors (70 cross-attention layers)."""
    unet = sdxl_unet_on_meta()
    with torch.device("meta"):
        msm.install_ms_attention(unet, msd.OFFICIAL_ADAPTER)
    keys = msm.adapter_key_map(unet)
    assert len(unet.attn_processors) == 140 and len(keys) == 140
    assert {int(key.split(".")[0]) for key in keys} == set(range(1, 140, 2))
    processors = unet.attn_processors
    widths = {".".join(name.split(".")[:2]): tuple(processors[name].get_parameter(parameter).shape)
              for name, parameter in keys.values()}
    assert widths == {"down_blocks.1": (640, 2048), "down_blocks.2": (1280, 2048), "up_blocks.0": (1280, 2048),
                      "up_blocks.1": (640, 2048), "mid_block.attentions": (1280, 2048)}
    assert keys["1.to_k_ip.weight"] == ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
                                        "to_k_ip.weight")
    assert keys["47.to_v_ip.weight"][0] == "down_blocks.2.attentions.1.transformer_blocks.9.attn2.processor"
    assert keys["49.to_v_ip.weight"][0] == "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    assert keys["139.to_v_ip.weight"][0] == "mid_block.attentions.0.transformer_blocks.9.attn2.processor"


def test_real_size_adapter_matches_the_published_file_size():
    """doge1516/MS-Diffusion's ``ms_adapter.bin`` is 1.84 GB, i.e. 459.76 M fp32 values counting its container.

    At real size (SDXL's UNet from its published config, the released adapter config, meta device) the resampler,
    the 70 ``to_k_ip``/``to_v_ip`` pairs and the 4 dummy tokens hold 459.74 M: the rest of the file is torch.save's
    zip container (a header, alignment and a central-directory entry per tensor, a few hundred bytes each for about
    300 tensors: under 0.05 M values' worth)."""
    unet = sdxl_unet_on_meta()
    with torch.device("meta"):
        msm.install_ms_attention(unet, msd.OFFICIAL_ADAPTER)
        resampler = msm.GroundingResampler(msd.OFFICIAL_ADAPTER)
    processors = unet.attn_processors
    adapter = sum(processors[name].get_parameter(parameter).numel()
                  for name, parameter in msm.adapter_key_map(unet).values())
    dummy = msd.OFFICIAL_ADAPTER.num_dummy_tokens * msd.OFFICIAL_ADAPTER.output_dim
    total = adapter + sum(parameter.numel() for parameter in resampler.parameters()) + dummy
    assert 0 <= 459.76 - total / 1e6 < 0.05
    assert round(total * 4 / 1e9, 2) == 1.84


# ------------------------------------------------------------------------------------------- the checkpoint


def official_checkpoint(pipeline: msm.MSDiffusionPipeline, seed: int = 7) -> dict:
    """A random ``ms_adapter.bin`` in upstream's layout (``MSAdapter.save_to_checkpoint``): the resampler's state
    dict, ``nn.ModuleList(unet.attn_processors.values()).state_dict()`` (self-attention processors hold no weights,
    cross-attention ones ``to_k_ip``/``to_v_ip`` shaped from the layer), and the dummy tokens as a Parameter."""
    generator = torch.Generator().manual_seed(seed)
    image_proj = OrderedDict((key, torch.randn(value.shape, generator=generator))
                             for key, value in pipeline.resampler.state_dict().items())
    adapter = OrderedDict()
    for index, name in enumerate(pipeline.pipe.unet.attn_processors):
        if name.endswith("attn2.processor"):  # upstream's rule for a cross-attention processor
            layer = pipeline.pipe.unet.get_submodule(name.removesuffix(".processor"))
            shape = (layer.to_q.out_features, layer.to_k.in_features)
            adapter[f"{index}.to_k_ip.weight"] = torch.randn(shape, generator=generator)
            adapter[f"{index}.to_v_ip.weight"] = torch.randn(shape, generator=generator)
    dummy = nn.Parameter(torch.randn(1, 4, pipeline.config.output_dim, generator=generator))
    return {"image_proj": image_proj, "ms_adapter": adapter, "dummy_image_tokens": dummy}


def assert_loaded(pipeline: msm.MSDiffusionPipeline, checkpoint: dict) -> None:
    resampler = pipeline.resampler.state_dict()
    assert set(resampler) == set(checkpoint["image_proj"])
    for key, value in checkpoint["image_proj"].items():
        torch.testing.assert_close(resampler[key], value.to(resampler[key].dtype), msg=key)
    processors = list(pipeline.pipe.unet.attn_processors.values())
    for key, value in checkpoint["ms_adapter"].items():
        index, parameter = key.split(".", 1)
        torch.testing.assert_close(processors[int(index)].get_parameter(parameter), value, msg=key)
    torch.testing.assert_close(pipeline.dummy_tokens, checkpoint["dummy_image_tokens"].detach())


def test_official_layout_loads_every_tensor(tmp_path: Path):
    pipeline = msd.build_tiny_ms_diffusion(seed=1)
    checkpoint = official_checkpoint(pipeline)
    path = tmp_path / "ms_adapter.bin"
    torch.save(checkpoint, path)
    pipeline.load_adapter(path)
    assert_loaded(pipeline, checkpoint)


def test_flattened_safetensors_conversion_loads(tmp_path: Path):
    from safetensors.torch import save_file

    pipeline = msd.build_tiny_ms_diffusion(seed=1)
    checkpoint = official_checkpoint(pipeline, seed=8)
    flat = {f"{part}.{key}": value for part in ("image_proj", "ms_adapter") for key, value in checkpoint[part].items()}
    flat["dummy_image_tokens"] = checkpoint["dummy_image_tokens"].detach()
    save_file(flat, str(tmp_path / "ms_adapter.safetensors"))
    pipeline.load_adapter(tmp_path / "ms_adapter.safetensors")
    assert_loaded(pipeline, checkpoint)


class NotATensor:
    pass


@pytest.mark.parametrize("damage, message", [
    (lambda c: c["image_proj"].pop("proj_in.weight"), r"\[image_proj\].*1 missing key.*proj_in.weight"),
    (lambda c: c["image_proj"].update(extra=torch.zeros(1)), r"\[image_proj\].*1 unexpected key.*extra"),
    (lambda c: c["image_proj"].update({"proj_out.weight": torch.zeros(3, 3)}), r"\[image_proj\].*size mismatch"),
    (lambda c: c["ms_adapter"].pop("1.to_v_ip.weight"), r"\[ms_adapter\].*1 missing key.*1.to_v_ip.weight"),
    (lambda c: c["ms_adapter"].update({"0.to_k_ip.weight": torch.zeros(1)}), r"\[ms_adapter\].*1 unexpected key"),
    (lambda c: c["ms_adapter"].update({"1.to_k_ip.weight": torch.zeros(2, 2)}), r"1.to_k_ip.weight has shape"),
    (lambda c: c.pop("dummy_image_tokens"), r"missing dummy_image_tokens"),
    (lambda c: c.update(dummy_image_tokens=torch.zeros(1, 3, 64)), r"dummy_image_tokens has shape"),
    (lambda c: c.update(image_proj=[1, 2]), r"'image_proj' is not a state dict"),
    (lambda c: c.update(extra=NotATensor()), r"weights_only=True.*cannot read.*safetensors"),
])
def test_damaged_checkpoints_name_the_file(tmp_path: Path, damage, message):
    pipeline = msd.build_tiny_ms_diffusion(seed=1)
    checkpoint = official_checkpoint(pipeline)
    damage(checkpoint)
    path = tmp_path / "ms_adapter.bin"
    torch.save(checkpoint, path)
    with pytest.raises(WeightsLoadError, match=message) as error:
        pipeline.load_adapter(path)
    assert str(path) in str(error.value)


def test_tiny_checkpoint_does_not_fit_the_official_sizes(tmp_path: Path):
    pipeline = msd.build_tiny_ms_diffusion(seed=1)
    path = tmp_path / "ms_adapter.bin"
    torch.save(official_checkpoint(pipeline), path)
    official = msd.build_tiny_ms_diffusion(seed=1)
    official.resampler = msm.GroundingResampler(replace(msd.OFFICIAL_ADAPTER, embedding_dim=32, output_dim=64,
                                                        phrase_dim=32))
    with pytest.raises(WeightsLoadError, match=rf"{path}.*image_proj.*does not fit GroundingResampler"):
        official.load_adapter(path)


# --------------------------------------------------------------------------------------- text and image inputs


def test_phrase_token_span():
    tokenizer = msd.build_tiny_clip_tokenizer()
    # <start> best quality , high quality , a dog on the beach  (one token per word or comma)
    assert msm.phrase_token_span(tokenizer, "dog", PROMPT) == (8, 9)
    assert msm.phrase_token_span(tokenizer, "beach", PROMPT + ".") == (11, 12)  # trailing punctuation ignored
    assert msm.phrase_token_span(tokenizer, "teddy bear", "a red teddy bear, in snow") == (3, 5)
    hot_dog = len(tokenizer.encode("hot-dog")) - 2
    assert msm.phrase_token_span(tokenizer, "dog", "a hot-dog stand") == (2, 2 + hot_dog)  # upstream's "-word" rule
    assert msm.phrase_token_span(tokenizer, "cat", PROMPT) == (0, 0)
    assert msm.phrase_token_span(tokenizer, "dog", "sky " * 80 + "dog") == (0, 0)  # truncated away
    # unknown words are split into several tokens; the span covers them all
    start, end = msm.phrase_token_span(tokenizer, "xylophone", "a xylophone")
    assert (start, end) == (2, 2 + len(tokenizer.encode("xylophone")) - 2) and end - start > 1


def test_reference_preprocessing_matches_clip_image_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = random_image(3, (300, 200))
    ours = msm.preprocess_reference(image, 224)
    square = image.convert("RGB").resize((512, 512))  # inference.py, then CLIPImageProcessor() (slow, PIL)
    reference = CLIPImageProcessorPil()(images=square, return_tensors="pt").pixel_values
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- the personaliser


def tiny_personalizer(**options) -> msd.MSDiffusionPersonalizer:
    spec = get_method("ms-diffusion+i2v")
    return msd.build_personalizer(spec.parse_options({"steps": 2, **options}), MethodContext(preset="tiny"))


def test_personalizer_is_deterministic_and_conditioned_by_the_reference():
    personalizer = tiny_personalizer()
    dog, other = [random_image(1)], [random_image(2)]
    first = personalizer.personalize(dog, "a dog on the beach", "dog", seed=0)
    assert first.mode == "RGB" and first.size == (64, 64)
    np.testing.assert_array_equal(as_array(first), as_array(personalizer.personalize(dog, "a dog on the beach",
                                                                                       "dog", seed=0)))
    changed = {
        "reference": personalizer.personalize(other, "a dog on the beach", "dog", seed=0),
        "seed": personalizer.personalize(dog, "a dog on the beach", "dog", seed=1),
    }
    for what, image in changed.items():
        assert np.abs(as_array(image) - as_array(first)).mean() > 0.5, what
    boxed = tiny_personalizer(box="0,0,0.5,0.5").personalize(dog, "a dog on the beach", "dog", seed=0)
    assert np.abs(as_array(boxed) - as_array(first)).mean() > 0.5
    # at scale 0 the reference (and the box) no longer count: the image is plain SDXL's
    plain = tiny_personalizer(scale=0)
    np.testing.assert_array_equal(as_array(plain.personalize(dog, "a dog on the beach", "dog", seed=0)),
                                  as_array(plain.personalize(other, "a dog on the beach", "dog", seed=0)))
    config = personalizer.config()
    assert config["steps"] == 2 and config["resolution"] == 64 and config["box"] == [0.25, 0.25, 0.75, 0.75]
    assert config["scale"] == 0.6 and config["guidance"] == 7.5 and personalizer.random_weights


def test_personalizer_auto_layout_dropped_grounding_and_no_cfg_change_the_image():
    dog = [random_image(1)]
    base = tiny_personalizer().personalize(dog, "a dog on the beach", "dog", seed=0)
    for options in ({"mask_threshold": 0.3, "start_step": 1}, {"drop_grounding_tokens": True}, {"guidance": 1.0}):
        image = tiny_personalizer(**options).personalize(dog, "a dog on the beach", "dog", seed=0)
        assert np.abs(as_array(image) - as_array(base)).mean() > 0.5, options


def test_tiny_preset_stage_1(tmp_path: Path):
    """The tiny stage 1's own settings (the whole tiny run, its determinism and cost: tests/test_contract.py)."""
    reference = tmp_path / "dog.png"
    random_image(5, (64, 80)).save(reference)
    case = Case("dog-0", "smoke", "dog", "a dog running on the beach", "dog", (str(reference),))
    spec = get_method("ms-diffusion+i2v")
    generator = spec.factory(spec.parse_options({"steps": 2, "i2v_steps": 2}), MethodContext(preset="tiny"))
    assert isinstance(generator, TwoStageGenerator)
    image = generator.generate_image(case, seed=0)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert generator.config()["options"]["box"] == [0.25, 0.25, 0.75, 0.75]


def test_official_loading_path_from_folders(tmp_path: Path, monkeypatch):
    """The non-preset builder: harness-resolved SDXL folder, CLIP-G folder and ms_adapter.bin (tiny stand-ins)."""
    from transformers import CLIPConfig, CLIPModel

    source = msd.build_tiny_ms_diffusion(seed=2)
    source.pipe.save_pretrained(tmp_path / "sdxl")
    # CLIP-G ships as a full CLIPModel folder (laion's): text tower, vision tower, both projections, the
    # projection width given at the top level only
    vision = {key: value for key, value in msd.TINY_VISION.items() if key != "projection_dim"}
    clip = CLIPModel(CLIPConfig(text_config=msd.TINY_TEXT | {"vocab_size": 1000}, vision_config=vision,
                                projection_dim=msd.TINY_VISION["projection_dim"]))
    clip.vision_model.load_state_dict(source.image_encoder.vision_model.state_dict())
    clip.visual_projection.load_state_dict(source.image_encoder.visual_projection.state_dict())
    clip.save_pretrained(tmp_path / "clip-g")
    checkpoint = official_checkpoint(source, seed=9)
    torch.save(checkpoint, tmp_path / "ms_adapter.bin")
    monkeypatch.setattr(msd, "OFFICIAL_ADAPTER", msd.TINY_ADAPTER)  # the tiny stand-in's sizes
    spec = get_method("ms-diffusion+i2v")
    options = spec.parse_options({"stage": "1", "sdxl_model": str(tmp_path / "sdxl"), "resolution": 64, "steps": 2,
                                  "image_encoder": str(tmp_path / "clip-g"),
                                  "adapter": str(tmp_path / "ms_adapter.bin")})
    context = MethodContext()
    context.weights = check_weights(spec.weight_specs(options, context), WeightsConfig(weights_dir=tmp_path / "none"))
    assert {key: resolved.source for key, resolved in context.weights.items()} == {
        "sdxl": "explicit", "image_encoder": "explicit", "adapter": "explicit"}
    personalizer = msd.build_personalizer(options, context)
    assert not personalizer.random_weights
    assert_loaded(personalizer.pipeline, checkpoint)
    torch.testing.assert_close(personalizer.pipeline.pipe.unet.conv_in.weight, source.pipe.unet.conv_in.weight)
    loaded_encoder = personalizer.pipeline.image_encoder.state_dict()
    for key, value in source.image_encoder.state_dict().items():
        torch.testing.assert_close(loaded_encoder[key], value, msg=key)
    image = personalizer.personalize([random_image(4)], "a dog on the beach", "dog", seed=0)
    assert image.size == (64, 64)
    assert personalizer.config()["adapter"] == str(tmp_path / "ms_adapter.bin")


# --------------------------------------------------------------------------------------- registration, options


def test_registration_metadata_and_weights():
    import csv

    import videobench

    spec = get_method("ms-diffusion+i2v")
    assert spec.kind == "two-stage" and spec.presets == ("tiny",)
    options = spec.parse_options({})
    assert spec.metadata(options)["paper_row"] == "MS-Diffusion"
    rows = csv.DictReader((Path(videobench.__file__).parent / "paper" / "table1.csv").open(encoding="utf-8"))
    assert "MS-Diffusion" in {row["method"] for row in rows}
    context = MethodContext()
    both = {s.key: s for s in spec.weight_specs(options, context)}
    assert list(both) == ["sdxl", "image_encoder", "adapter", "i2v"]
    assert (both["sdxl"].hf_repo, both["sdxl"].folder) == ("stabilityai/stable-diffusion-xl-base-1.0", True)
    assert both["image_encoder"].hf_repo == "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
    assert (both["adapter"].hf_repo, both["adapter"].hf_files) == ("doge1516/MS-Diffusion", ("ms_adapter.bin",))
    assert [s.key for s in spec.weight_specs(spec.parse_options({"stage": "1"}), context)] == [
        "sdxl", "image_encoder", "adapter"]
    assert [s.key for s in spec.weight_specs(spec.parse_options({"stage": "2"}), context)] == ["i2v"]
    assert spec.weight_specs(options, MethodContext(preset="tiny")) == []
    explicit = spec.parse_options({"adapter": "/x/ms_adapter.bin", "sdxl_model": "me/sdxl"})
    specs = {s.key: s for s in spec.weight_specs(explicit, context)}
    assert specs["adapter"].explicit == "/x/ms_adapter.bin" and specs["sdxl"].explicit == "me/sdxl"
    defaults = {row.name: row.default for row in spec.describe_options()}
    assert defaults["scale"] == 0.6 and defaults["steps"] == 30 and defaults["guidance"] == 7.5
    assert defaults["resolution"] == 1024 and defaults["box"] == (0.25, 0.25, 0.75, 0.75)
    assert defaults["negative_prompt"] == "monochrome, lowres, bad anatomy, worst quality, low quality"


@pytest.mark.parametrize("raw, message", [  # the rules beyond types and bounds (those: tests/test_contract.py)
    ({"box": "0.1,0.2,0.3"}, "4 numbers"),
    ({"box": "0.6,0.2,0.3,0.9"}, "x1 < x2"),
    ({"box": "0,0,1.5,1"}, r"\[0, 1\]"),
    ({"resolution": "1001"}, "multiple of 8"),
])
def test_option_errors(raw, message):
    with pytest.raises(OptionError, match=message) as error:
        get_method("ms-diffusion+i2v").parse_options(raw)
    assert "ms-diffusion+i2v" in str(error.value)


def test_tiny_tokenizer_is_offline_and_whole_word():
    tokenizer = msd.build_tiny_clip_tokenizer()
    assert tokenizer.tokenize(PROMPT) == ["best</w>", "quality</w>", ",</w>", "high</w>", "quality</w>", ",</w>",
                                          "a</w>", "dog</w>", "on</w>", "the</w>", "beach</w>"]
    ids = tokenizer("a dog", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id and ids[3] == tokenizer.eos_token_id
