"""The ``videobooth`` method: the port of VideoBooth's networks, its checkpoint loading, sampling and registration.

Checkpoints are tiny random ones written in the official layouts (SD 1.4's diffusers ``unet/`` folder,
``watermark_remove_module.pt`` = ``{"ema_unet": ...}``, ``mapper.pt`` = ``{"model": ..., "ema": ...}`` with
upstream's flattened attention names, a CLIP ViT-L/14-style ``CLIPModel`` folder, a diffusers VAE folder) and
loaded through the method's real loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from baselines.videobooth import (
    TINY_CONFIG,
    TINY_UNET,
    TINY_VAE,
    VideoBoothConfig,
    build_tiny_pipeline,
    build_tiny_tokenizer,
    build_videobooth,
    frames_to_uint8,
    guided_noise,
    load_image_prompt,
    load_training_checkpoint,
    load_videobooth,
    make_scheduler,
    placeholder_prompt,
    respaced_timesteps,
    square_on_white,
)
from baselines.videobooth_model import (
    SparseCausalAttention,
    UNetConfig,
    VideoBoothMapper,
    VideoBoothUNet3D,
    inject_word_embeddings,
    mapper_key_map,
)
from videobench.cases import Case
from videobench.methods import Generator, MethodContext, get_method
from videobench.methods import build_generator as build_method
from videobench.weights import MissingWeightsError, WeightsConfig, WeightsLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

#: A diffusers UNet2DConditionModel config of SD 1.x's structure at toy size (the "SD 1.4" of the tests).
TINY_SD_UNET = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),  # noqa: C408
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, attention_head_dim=2,
                    cross_attention_dim=32, norm_num_groups=4, sample_size=32)
TINY_WATERMARK = (16, 24, 24)  # the watermark branch's widths (upstream: 320, 640, 640)
SD14_UNET = dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],  # noqa: C408
                 center_input_sample=False, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
                 flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1,
                 norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)


def _random_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator) for key, value in state.items()}


# ------------------------------------------------------------------------------------------------ official files


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> dict:
    """Tiny checkpoints in every official layout, and the tensors written into them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("videobooth_official")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sd_unet = UNet2DConditionModel(**TINY_SD_UNET)
        sd_unet.save_pretrained(root / "stable-diffusion-v1-4" / "unet")
        config = dataclasses.replace(UNetConfig.from_sd_unet_config(dict(sd_unet.config)),
                                     watermark_block_out_channels=TINY_WATERMARK)
        with torch.device("meta"):
            video_unet = VideoBoothUNet3D(config)
        # upstream's video UNet has every key but the exemplar projections (the mapper adds those)
        ema_unet = _random_like({k: v for k, v in video_unet.state_dict().items() if "_exemplar." not in k}, 1)
        ema_unet["unused.extra.weight"] = torch.ones(3)  # loaded with strict=False upstream: ignored
        torch.save({"ema_unet": ema_unet, "step": torch.tensor(7)}, root / "watermark_remove_module.pt")
        mapper_ema = _random_like(VideoBoothMapper(32, 32, 24, 5).state_dict(), 2)
        shapes = video_unet.state_dict()
        mapper_ema.update(_random_like({key: shapes[target] for key, target in mapper_key_map(video_unet).items()},
                                       3))
        torch.save({"model": {k: torch.zeros_like(v) for k, v in mapper_ema.items()}, "ema": mapper_ema},
                   root / "mapper.pt")

        tokenizer = build_tiny_tokenizer(model_max_length=77)
        tokenizer.save_pretrained(root / "clip-vit-large-patch14")
        clip = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,  # noqa: C408
                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=16,  # noqa: C408
                               num_attention_heads=2, image_size=224, patch_size=32),
            projection_dim=16))
        clip.save_pretrained(root / "clip-vit-large-patch14")
        AutoencoderKL(**{**TINY_VAE, "sample_size": 256}).save_pretrained(root / "sd-vae-ft-ema")
    base = load_file(str(root / "stable-diffusion-v1-4" / "unet" / "diffusion_pytorch_model.safetensors"))
    return {"root": root, "base": root / "stable-diffusion-v1-4", "watermark": root / "watermark_remove_module.pt",
            "mapper": root / "mapper.pt", "clip": root / "clip-vit-large-patch14", "vae": root / "sd-vae-ft-ema",
            "base_state": base, "ema_unet": ema_unet, "mapper_ema": mapper_ema, "clip_state": clip.state_dict()}


def test_official_layouts_load_every_tensor_where_upstream_puts_it(official):
    loaded = load_videobooth(official["base"], official["watermark"], official["mapper"], 32, 32)
    key_map = mapper_key_map(loaded.unet)
    from_mapper = {target: source for source, target in key_map.items()}
    state = loaded.unet.state_dict()
    assert loaded.unet.config.watermark_block_out_channels == TINY_WATERMARK
    counts = {"mapper": 0, "ema_unet": 0, "sd": 0}
    for key, value in state.items():
        if key in from_mapper:  # attn1 to_k/to_v <- to_k_new/to_v_new, exemplar projections, attn2 <- to_k/to_v
            torch.testing.assert_close(value, official["mapper_ema"][from_mapper[key]], rtol=0, atol=0)
            counts["mapper"] += 1
        elif key in official["ema_unet"]:  # the video UNet overlays SD 1.4 everywhere it has values
            torch.testing.assert_close(value, official["ema_unet"][key], rtol=0, atol=0)
            counts["ema_unet"] += 1
        else:
            torch.testing.assert_close(value, official["base_state"][key], rtol=0, atol=0)
            counts["sd"] += 1
    blocks = len(loaded.unet.transformer_block_paths())
    assert counts["mapper"] == 6 * blocks == len(key_map) and counts["ema_unet"] == len(state) - 6 * blocks
    assert counts["sd"] == 0  # this ema_unet has every key, so SD's values are all replaced (as upstream)
    for key, value in loaded.mapper.state_dict().items():  # the EMA weights, not "model"
        torch.testing.assert_close(value, official["mapper_ema"][key], rtol=0, atol=0)
    assert loaded.mapper.mapping_0[0].weight.shape == (24, 32)  # hidden width read off the checkpoint
    assert loaded.report.ignored_video_keys == ["unused.extra.weight"]
    assert not any(p.is_meta for p in [*loaded.unet.parameters(), *loaded.mapper.parameters()])


def test_sd_weights_fill_what_the_video_checkpoint_lacks(official, tmp_path):
    """A partial ema_unet (only the video-only layers) leaves SD 1.4's 2D weights in place."""
    partial = {k: v for k, v in official["ema_unet"].items() if "attn_temp" in k or "norm_temp" in k
               or k.startswith("watermark_")}
    path = tmp_path / "watermark_remove_module.pt"
    torch.save({"ema_unet": partial}, path)
    loaded = load_videobooth(official["base"], path, official["mapper"], 32, 32)
    state = loaded.unet.state_dict()
    torch.testing.assert_close(state["conv_in.weight"], official["base_state"]["conv_in.weight"], rtol=0, atol=0)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"
    torch.testing.assert_close(state[key], partial[key], rtol=0, atol=0)
    # SD's attn1/attn2 to_k, to_v are replaced by the mapper's; every other 2D tensor is SD's
    assert len(loaded.report.from_base) == len(official["base_state"]) - 4 * len(loaded.unet.transformer_block_paths())


def test_without_sd_base_the_video_checkpoint_must_hold_the_whole_unet(official, tmp_path):
    config = dataclasses.replace(UNetConfig.from_sd_unet_config(json.loads(
        (official["base"] / "unet" / "config.json").read_text())), watermark_block_out_channels=TINY_WATERMARK)
    with_base = load_videobooth(official["base"], official["watermark"], official["mapper"], 32, 32)
    alone = load_videobooth(None, official["watermark"], official["mapper"], 32, 32, unet_config=config)
    for key, value in with_base.unet.state_dict().items():  # this ema_unet has every tensor: SD changes nothing
        assert torch.equal(value, alone.unet.state_dict()[key]), key
    partial = {k: v for k, v in official["ema_unet"].items() if k != "conv_in.weight"}
    torch.save({"ema_unet": partial}, tmp_path / "partial.pt")
    with pytest.raises(WeightsLoadError, match=r"partial\.pt: no checkpoint provides 1 UNet.*conv_in.*sd_base=true"):
        load_videobooth(None, tmp_path / "partial.pt", official["mapper"], 32, 32, unet_config=config)


def test_flat_safetensors_conversions_load_the_same(official, tmp_path):
    mapper = tmp_path / "mapper.safetensors"
    watermark = tmp_path / "watermark_remove_module.safetensors"
    save_file(official["mapper_ema"], str(mapper))
    save_file(official["ema_unet"], str(watermark))
    a = load_videobooth(official["base"], official["watermark"], official["mapper"], 32, 32)
    b = load_videobooth(official["base"], watermark, mapper, 32, 32)
    for key, value in a.unet.state_dict().items():
        assert torch.equal(value, b.unet.state_dict()[key]), key


def _save_mapper(path: Path, ema: dict) -> Path:
    torch.save({"ema": ema}, path)
    return path


def test_wrong_checkpoints_raise_errors_naming_the_file(official, tmp_path):
    ema = official["mapper_ema"]
    dropped = next(iter(k for k in ema if k.endswith("_to_k_exemplar.weight")))
    with pytest.raises(WeightsLoadError, match=r"m1\.pt.*1 missing key.*to_k_exemplar"):
        load_videobooth(official["base"], official["watermark"],
                        _save_mapper(tmp_path / "m1.pt", {k: v for k, v in ema.items() if k != dropped}), 32, 32)
    with pytest.raises(WeightsLoadError, match=r"m2\.pt.*1 unexpected key.*bogus"):
        load_videobooth(official["base"], official["watermark"],
                        _save_mapper(tmp_path / "m2.pt", {**ema, "bogus.weight": torch.ones(1)}), 32, 32)
    no_temporal = {k: v for k, v in official["ema_unet"].items() if ".attn_temp." not in k}
    torch.save({"ema_unet": no_temporal}, tmp_path / "w1.pt")
    with pytest.raises(WeightsLoadError, match=r"w1\.pt: lacks .*attn_temp"):
        load_videobooth(official["base"], tmp_path / "w1.pt", official["mapper"], 32, 32)
    bad_shape = dict(official["ema_unet"])
    bad_shape["conv_in.weight"] = torch.zeros(1)
    torch.save({"ema_unet": bad_shape}, tmp_path / "w2.pt")
    with pytest.raises(WeightsLoadError, match=r"w2\.pt: 1 tensor\(s\) of the wrong shape.*conv_in"):
        load_videobooth(official["base"], tmp_path / "w2.pt", official["mapper"], 32, 32)
    torch.save({"state": official["ema_unet"]}, tmp_path / "w3.pt")
    with pytest.raises(WeightsLoadError, match=r"w3\.pt: expected a checkpoint with a 'ema_unet'"):
        load_videobooth(official["base"], tmp_path / "w3.pt", official["mapper"], 32, 32)
    base = tmp_path / "sd" / "unet"
    base.mkdir(parents=True)
    (base / "config.json").write_text((official["base"] / "unet" / "config.json").read_text())
    save_file({**official["base_state"], "extra.weight": torch.ones(1)},
              str(base / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightsLoadError, match=r"diffusion_pytorch_model\.safetensors: not Stable Diffusion.*extra"):
        load_videobooth(tmp_path / "sd", official["watermark"], official["mapper"], 32, 32)


def test_a_checkpoint_needing_full_unpickling_is_refused_with_a_recipe(official, tmp_path):
    path = tmp_path / "mapper.pt"
    torch.save({"ema": official["mapper_ema"], "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(WeightsLoadError) as error:
        load_training_checkpoint(path, "ema")
    message = str(error.value)
    assert "mapper.pt" in message and "weights_only=True" in message and "never unpickles" in message
    assert "save_file" in message and "c['ema']" in message and "mapper.safetensors" in message


def test_factory_with_official_files_runs_at_native_size(official):
    """The harness path with explicit paths: weights resolved, loaded, 16 frames of 256x256 whatever the suite."""
    options = {"base_model": str(official["base"]), "mapper": str(official["mapper"]),
               "watermark_module": str(official["watermark"]), "clip_model": str(official["clip"]),
               "vae": str(official["vae"]), "steps": 1}
    context = MethodContext(num_frames=9, height=128, width=192, fps=16,
                            weights_config=WeightsConfig(weights_dir="/nonexistent-weights"))
    generator, _ = build_method(get_method("videobooth"), options, context)
    assert isinstance(generator, Generator) and generator.run_name == "videobooth" and not generator.random_weights
    config = generator.config()
    assert config["native_size"] is True and (config["num_frames"], config["height"], config["width"]) == (16, 256, 256)
    assert config["suite_geometry_not_applied"] == {"num_frames": 9, "height": 128, "width": 192, "fps": 16}
    assert generator.fps == 8 and config["steps"] == 1 and config["ignored_watermark_module_keys"] == 1
    clip_state = official["clip_state"]
    for key, value in generator.pipeline.text_encoder.state_dict().items():
        if "position_ids" not in key:
            assert torch.equal(value, clip_state[f"text_model.{key}"]), key
    for key, value in generator.pipeline.image_encoder.state_dict().items():
        assert torch.equal(value, clip_state[f"vision_model.{key}"]), key
    image = official["root"] / "subject.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    output = generator.generate(_case(image), seed=0)
    assert output.frames.shape == (16, 256, 256, 3) and output.frames.dtype == np.uint8
    assert output.diagnostics["entity_in_prompt"] is True and output.diagnostics["image_tokens"] == 5


def test_missing_weights_are_all_listed_before_loading(tmp_path):
    context = MethodContext(weights_config=WeightsConfig(weights_dir=tmp_path))
    with pytest.raises(MissingWeightsError) as error:
        build_method(get_method("videobooth"), {}, context)
    message = str(error.value)
    assert "5 model(s)" in message
    for name in ("openai/clip-vit-large-patch14", "stabilityai/sd-vae-ft-ema", "CompVis/stable-diffusion-v1-4",
                 "yumingj/VideoBooth_models (mapper.pt)", "yumingj/VideoBooth_models (watermark_remove_module.pt)"):
        assert name in message
    with pytest.raises(MissingWeightsError, match="4 model"):
        build_method(get_method("videobooth"), {"sd_base": "false"}, context)
    random = MethodContext(random_weights=True, weights_config=WeightsConfig(weights_dir=tmp_path))
    with pytest.raises(MissingWeightsError, match="2 model"):
        build_method(get_method("videobooth"), {}, random)


# ------------------------------------------------------------------------------------------------ the network


def test_video_unet_2d_part_has_sd14s_keys_and_shapes():
    """The 2D weights load strictly from SD 1.4's diffusers UNet: same 686 names and shapes (meta device)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd = UNet2DConditionModel(**SD14_UNET)
        video = VideoBoothUNet3D(UNetConfig.from_sd_unet_config(SD14_UNET))
    sd_shapes = {k: tuple(v.shape) for k, v in sd.state_dict().items()}
    video_shapes = {k: tuple(v.shape) for k, v in video.state_dict().items()}
    assert len(sd_shapes) == 686 and all(video_shapes[k] == shape for k, shape in sd_shapes.items())
    extra = set(video_shapes) - set(sd_shapes)
    assert all(".attn_temp." in k or ".norm_temp." in k or "_exemplar." in k or k.startswith("watermark_")
               for k in extra)
    assert len(video.transformer_block_paths()) == 16 and len(mapper_key_map(video)) == 96
    assert video.config.watermark_block_out_channels == (320, 640, 640)
    with pytest.raises(WeightsLoadError, match="use_linear_projection"):
        UNetConfig.from_sd_unet_config({**SD14_UNET, "use_linear_projection": True})


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention written out per head and query (float64)."""
    d = q.shape[-1] // heads
    out = torch.zeros(q.shape[0], q.shape[1], dtype=torch.float64)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        for i in range(q.shape[0]):
            logits = torch.tensor([float(q[i, cols] @ k[j, cols]) / math.sqrt(d) for j in range(k.shape[0])])
            weights = torch.softmax(logits.double(), dim=0)
            out[i, cols] = (weights[:, None] * v[:, cols]).sum(0)
    return out


def _naive_sparse_causal(attn: SparseCausalAttention, hidden: torch.Tensor, f: int, exemplar: torch.Tensor | None,
                         scale: float) -> torch.Tensor:
    """Upstream's ``inj_forward_stattention`` written out frame by frame."""
    weight = {name: getattr(attn, name).weight.detach().double() for name in ("to_q", "to_k", "to_v", "to_k_exemplar",
                                                                    "to_v_exemplar")}
    hidden = hidden.double()
    b = hidden.shape[0] // f
    out = []
    for batch in range(b):
        frames = hidden[batch * f:(batch + 1) * f]
        q = [x @ weight["to_q"].T for x in frames]
        k = [x @ weight["to_k"].T for x in frames]
        v = [x @ weight["to_v"].T for x in frames]
        if exemplar is not None:
            ek, ev = exemplar[batch].double() @ weight["to_k_exemplar"].T, exemplar[batch].double() @ weight[
                "to_v_exemplar"].T
            u0 = _naive_attention(q[0], torch.cat([ek, k[0]]), torch.cat([ev, v[0]]), attn.heads)
            v[0] = v[0] + scale * (u0 - v[0])
        for i in range(f):
            prev = max(i - 1, 0)
            o = _naive_attention(q[i], torch.cat([k[0], k[prev]]), torch.cat([v[0], v[prev]]), attn.heads)
            out.append(o @ attn.to_out[0].weight.detach().double().T + attn.to_out[0].bias.detach().double())
    return torch.cat(out).reshape(hidden.shape[0], hidden.shape[1], -1)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_attention_injection_matches_a_naive_dense_reference(scale):
    torch.manual_seed(0)
    attn = SparseCausalAttention(8, heads=2, dim_head=4)
    b, f, n, m = 2, 3, 4, 5
    hidden, exemplar = torch.randn(b * f, n, 8), torch.randn(b, m, 8)
    with torch.no_grad():
        fast = attn(hidden, f, exemplar, scale)
        plain = attn(hidden, f)
    torch.testing.assert_close(fast.double(), _naive_sparse_causal(attn, hidden, f, exemplar, scale), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(plain.double(), _naive_sparse_causal(attn, hidden, f, None, 0.0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast, plain, atol=1e-3)


def test_attention_injection_known_answer():
    """Scalar tokens, identity projections: every frame reads frame 0's injected value ``u0``."""
    attn = SparseCausalAttention(1, heads=1, dim_head=1)
    for linear in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0], attn.to_k_exemplar, attn.to_v_exemplar):
        torch.nn.init.ones_(linear.weight)
    torch.nn.init.zeros_(attn.to_out[0].bias)
    h = torch.tensor([0.5, 1.0, -2.0])  # frames 0, 1, 2 (one token each)
    e = 3.0  # the exemplar token
    w_e, w_0 = math.exp(h[0] * e), math.exp(h[0] * h[0])
    u0 = (w_e * e + w_0 * h[0]) / (w_e + w_0)
    a, c = math.exp(h[2] * h[0]), math.exp(h[2] * h[1])
    expected = [u0, u0, (a * u0 + c * h[1]) / (a + c)]  # frame 2: keys h0, h1; values u0, h1
    with torch.no_grad():
        out = attn(h.reshape(3, 1, 1), 3, torch.tensor([[[e]]]))
    torch.testing.assert_close(out.flatten(), torch.tensor(expected, dtype=torch.float32))
    with torch.no_grad():  # without injection: frames 0 and 1 read h0; frame 2 reads h0 and h1
        plain = attn(h.reshape(3, 1, 1), 3)
    torch.testing.assert_close(plain.flatten()[:2], h[[0, 0]])


@pytest.fixture(scope="module")
def tiny_unet() -> VideoBoothUNet3D:
    torch.manual_seed(0)
    return VideoBoothUNet3D(TINY_UNET).eval()


def test_unet_exemplar_branch_injection_scale_and_single_frame(tiny_unet):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 8, 8, generator=generator)
    context, uncond = torch.randn(1, 6, 32, generator=generator), torch.randn(1, 6, 32, generator=generator)
    exemplar = torch.randn(1, 4, 1, 8, 8, generator=generator)
    with torch.no_grad():
        plain = tiny_unet(x, 500, context)
        injected = tiny_unet(x, 500, context, exemplar, 500, uncond)
        zero = tiny_unet(x, 500, context, exemplar, 500, uncond, injection_scale=0.0)
        repeated = tiny_unet(x, 500, context, exemplar.repeat(1, 1, 3, 1, 1), 500, uncond)  # upstream's layout
    assert torch.equal(zero, plain)
    assert (injected - plain).abs().max() > 1e-3
    torch.testing.assert_close(repeated, injected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # sizes that are not multiples of the UNet's factor go through the upsample sizes
        odd = tiny_unet(torch.randn(1, 4, 2, 6, 10), 10, context, torch.randn(1, 4, 1, 6, 10), 10, uncond)
    assert odd.shape == (1, 4, 2, 6, 10)


def test_mapper_output_and_word_injection_known_answers():
    torch.manual_seed(0)
    mapper = VideoBoothMapper(6, 4, 8, 2)
    features = [torch.randn(1, 5, 6), torch.randn(1, 5, 6)]
    out = mapper(features)
    expected = mapper.mapping_1(features[1][:, :1]) + mapper.mapping_patch_1(features[1][:, 1:]).mean(1, True)
    assert out.shape == (1, 2, 4) and torch.allclose(out[:, 1:], expected)

    embeddings = torch.arange(8, dtype=torch.float32)[None, :, None].repeat(1, 1, 2)  # row i holds i
    injected = torch.full((1, 3, 2), -1.0)
    ids = torch.tensor([[0, 5, 7, 8, 6, 9, 9, 9]])  # bos, word, placeholder (7, 8), word, eos, padding
    rows = inject_word_embeddings(embeddings, ids, [7, 8], injected)[0, :, 0].tolist()
    assert rows == [0, 1, -1, -1, -1, 4, 5, 6]  # 2 tokens -> 3 embeddings: the rest shifts right by one
    rows = inject_word_embeddings(embeddings, ids, [7, 8, 6, 9], injected)[0, :, 0].tolist()
    assert rows == [0, 1, -1, -1, -1, 6, 7, 7]  # 4 tokens -> 3: shifted left, filled from the end
    rows = inject_word_embeddings(embeddings, torch.tensor([[0, 1, 2, 3, 4, 5, 7, 8]]), [7, 8], injected)[0, :, 0]
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]  # at the end: the embeddings are cut
    untouched = inject_word_embeddings(embeddings, torch.tensor([[0, 1, 2, 3, 4, 5, 6, 9]]), [7, 8], injected)
    assert torch.equal(untouched, embeddings)


def test_text_encoding_replaces_exactly_the_entity_tokens():
    pipeline = build_tiny_pipeline()
    text, found = placeholder_prompt("A Dog on the beach", "dog", "sdksd")
    assert (text, found) == ("a sdksd on the beach", True)
    injected = torch.randn(1, 5, 32)
    placeholder = pipeline.placeholder_ids()
    ids = pipeline.tokenize(text)
    start = int(torch.nonzero(ids[0] == placeholder[0])[0])
    captured = {}
    embeddings = pipeline.text_encoder.embeddings  # token + position embeddings: what the encoder layers get
    handle = embeddings.register_forward_hook(lambda module, inputs, output: captured.setdefault("rows", output))
    try:
        states, info = pipeline.encode_text(text, injected)
    finally:
        handle.remove()
    positions = embeddings.position_embedding.weight[: ids.shape[1]]
    plain_rows = embeddings.token_embedding(ids)
    rows = captured["rows"][0] - positions
    assert len(placeholder) == 2 and info == {"placeholder_tokens": 2, "placeholder_positions": [start]}
    torch.testing.assert_close(rows[:start], plain_rows[0, :start])
    torch.testing.assert_close(rows[start:start + 5], injected[0])
    torch.testing.assert_close(rows[start + 5:], plain_rows[0, start + 2:start + 2 + len(rows) - start - 5])
    plain_states, _ = pipeline.encode_text(text)
    torch.testing.assert_close(states[0, :start], plain_states[0, :start])  # causal: earlier tokens unchanged
    assert not torch.allclose(states[0, start:], plain_states[0, start:])


# ------------------------------------------------------------------------------------------------ sampling


def test_respacing_matches_adm():
    steps = respaced_timesteps(1000, 250)
    assert len(steps) == 250 and steps[0] == 999 and steps[-1] == 0
    assert steps == sorted({round(i * 999 / 249) for i in range(250)}, reverse=True)
    assert set(np.diff(steps[::-1]).tolist()) == {4, 5}
    assert respaced_timesteps(1000, 1) == [0] and respaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        respaced_timesteps(1000, 1001)


def test_ddpm_step_is_adms_posterior_with_fixed_large_variance():
    scheduler = make_scheduler(VideoBoothConfig(), 250)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alphas_cumprod = np.cumprod(1 - betas)
    t, prev = int(scheduler.timesteps[10]), int(scheduler.timesteps[11])
    sample, eps = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64), torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    out = scheduler.step(eps.float(), torch.tensor(t), sample.float(), generator=torch.Generator().manual_seed(5))
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5)).double()
    abar, abar_prev = alphas_cumprod[t], alphas_cumprod[prev]
    beta = 1 - abar / abar_prev  # the respaced beta
    x0 = (sample - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    coef_x0, coef_xt = beta * math.sqrt(abar_prev) / (1 - abar), (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
    mean = coef_x0 * x0 + coef_xt * sample
    torch.testing.assert_close(out.prev_sample.double(), mean + math.sqrt(beta) * noise, rtol=1e-4, atol=1e-4)


def test_guidance_on_three_channels_as_upstream():
    cond, uncond = torch.ones(1, 4, 1, 1, 1) * 2, torch.zeros(1, 4, 1, 1, 1)
    assert guided_noise(cond, uncond, 4.0, "upstream").flatten().tolist() == [8, 8, 8, 2]
    assert guided_noise(cond, uncond, 4.0, "all").flatten().tolist() == [8, 8, 8, 8]


def test_image_prompt_preprocessing(tmp_path):
    wide = Image.fromarray(np.zeros((2, 4, 3), dtype=np.uint8))
    square = square_on_white(wide)
    assert square.shape == (3, 4, 4) and square[:, 0].eq(255).all() and square[:, 3].eq(255).all()
    assert square[:, 1:3].eq(0).all()  # diff 2: one row above, one below
    tall = square_on_white(Image.fromarray(np.zeros((5, 2, 3), dtype=np.uint8)))
    assert tall[:, :, 0].eq(255).all() and tall[:, :, 3:].eq(255).all() and tall[:, :, 1:3].eq(0).all()
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[2:6, 3:9] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    image, box = load_image_prompt(tmp_path / "cut.png")
    assert box == (3, 2, 9, 6) and image.getpixel((0, 0)) == (255, 255, 255)
    cropped = square_on_white(image, box)
    assert cropped.shape == (3, 6, 6) and tuple(cropped[:, 3, 3].tolist()) == (10, 20, 30)
    Image.fromarray(rgba[..., :3]).save(tmp_path / "photo.png")
    assert load_image_prompt(tmp_path / "photo.png")[1] is None
    video = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).reshape(5, 1, 1, 1).repeat(1, 3, 1, 1)
    assert frames_to_uint8(video)[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]


# ------------------------------------------------------------------------------------------------ the method


def _case(reference: Path | str, prompt: str = "a dog on the beach", entity: str = "dog") -> Case:
    return Case(case_id="dog-beach", suite="smoke", subject="dog", prompt=prompt, entity=entity,
                references=(str(reference),))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for seed in (0, 1):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        paths.append(folder / f"ref{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def tiny_generator():
    context = MethodContext(preset="tiny", num_frames=9, height=128, width=192, fps=16,
                            weights_config=WeightsConfig(weights_dir="/nonexistent-weights"))
    generator, _ = build_method(get_method("videobooth"), {}, context)
    return generator


def test_registered_with_its_metadata():
    spec = get_method("videobooth")
    assert spec.factory is build_videobooth and spec.kind == "video-model" and spec.presets == ("tiny",)
    options = spec.parse_options({})
    assert spec.paper(options).table1_row == "VideoBooth" and "native 16 frames of 256x256" in spec.description
    metadata = spec.metadata(options)
    assert metadata["options"]["steps"] is None and metadata["options"]["guidance"] == 4.0
    assert metadata["options"]["negative_prompt"] == "None" and metadata["options"]["cfg_channels"] == "upstream"
    specs = spec.weight_specs(options, MethodContext())
    assert [s.key for s in specs] == ["clip", "vae", "base", "mapper", "watermark"]
    by_key = {s.key: s for s in specs}
    assert by_key["mapper"].hf_repo == by_key["watermark"].hf_repo == "yumingj/VideoBooth_models"
    assert by_key["watermark"].hf_files == ("watermark_remove_module.pt",)
    assert by_key["mapper"].hf_files == ("mapper.pt",)
    assert spec.weight_specs(options, MethodContext(preset="tiny")) == []
    assert [s.key for s in spec.weight_specs(options, MethodContext(random_weights=True))] == ["clip", "vae"]
    helps = {info.name: info.help for info in spec.describe_options()}
    assert helps["watermark_module"].startswith("watermark_remove_module.pt, the video UNet")
    explicit = spec.weight_specs(spec.parse_options({"mapper": "/x/m.pt"}), MethodContext())
    assert {s.key: s for s in explicit}["mapper"].explicit == Path("/x/m.pt")


def test_tiny_preset_native_size_determinism_and_conditioning(tiny_generator, references):
    generator = tiny_generator
    assert generator.run_name == "videobooth-tiny" and generator.random_weights and generator.fps == 8
    config = generator.config()
    assert config["native_size"] is True and (config["num_frames"], config["height"], config["width"]) == (4, 128, 128)
    json.dumps(config)
    first = generator.generate(_case(references[0]), seed=3)
    assert first.frames.shape == (4, 128, 128, 3) and first.frames.dtype == np.uint8
    assert first.diagnostics == {"entity_in_prompt": True, "image_tokens": 5, "placeholder_tokens": 2,
                                 "placeholder_positions": [2], "subject_box": False}
    assert np.array_equal(generator.generate(_case(references[0]), seed=3).frames, first.frames)
    assert not np.array_equal(generator.generate(_case(references[0]), seed=4).frames, first.frames)
    other_reference = generator.generate(_case(references[1]), seed=3).frames
    assert np.abs(other_reference.astype(int) - first.frames.astype(int)).mean() > 0.5


def test_fine_and_coarse_embeddings_each_condition_the_video(references):
    pipeline = build_tiny_pipeline()
    image = Image.open(references[0]).convert("RGB")
    other = Image.open(references[1]).convert("RGB")
    both = pipeline(image, "a dog on the beach", "dog", seed=0, steps=2).frames
    coarse_only = pipeline(image, "a dog on the beach", "dog", seed=0, steps=2, injection_scale=0.0).frames
    assert not np.array_equal(both, coarse_only)  # the attention injection matters
    other_coarse = pipeline(other, "a dog on the beach", "dog", seed=0, steps=2, injection_scale=0.0).frames
    assert not np.array_equal(coarse_only, other_coarse)  # the mapper's tokens alone carry the reference
    no_entity = pipeline(image, "a cat on the beach", "dog", seed=0, steps=2)
    assert no_entity.diagnostics["entity_in_prompt"] is False and "placeholder_positions" in no_entity.diagnostics


def _exemplar_inputs(pipeline, **call) -> tuple[list[torch.Tensor], np.ndarray]:
    """The exemplar tensors the UNet receives during one sampling run (one per step), and the video."""
    seen: list[torch.Tensor] = []

    def record(module, args):
        if len(args) > 3 and args[3] is not None:
            seen.append(args[3].clone())

    handle = pipeline.unet.register_forward_pre_hook(record)
    try:
        frames = pipeline(**call).frames
    finally:
        handle.remove()
    return seen, frames


def test_exemplar_branch_is_upstreams_independently_noised_frames(references):
    """Upstream (``sample.py``: ``x[:, :, :1].repeat(1, 1, 16, 1, 1)``; ``gaussian_diffusion.py`` ``p_sample``:
    ``q_sample(exemplar_latent_ori, t, noise=th.randn_like(exemplar_latent_ori))``): at every step the exemplar
    branch gets the posterior sample on every frame, each frame with its own fresh noise. The reference draws from the
    same seeded generator in upstream's order: initial latents, posterior sample, then per step the exemplar noise
    (all frames) and the ancestral step's noise (none at t = 0)."""
    from baselines.videobooth import image_prompt_tensors

    pipeline = build_tiny_pipeline()
    config = pipeline.config
    image = Image.open(references[0]).convert("RGB")
    seed, steps = 5, 3
    seen, frames = _exemplar_inputs(pipeline, image=image, prompt="a dog on the beach", entity="dog", seed=seed,
                                    steps=steps)

    generator = torch.Generator().manual_seed(seed)
    grid = config.height // pipeline.vae_factor
    latent_shape = (1, 4, config.num_frames, grid, grid)
    torch.randn(latent_shape, generator=generator)
    _, vae_pixels = image_prompt_tensors(image, None, config)
    with torch.no_grad():
        posterior = pipeline.vae.encode(vae_pixels).latent_dist
    x0 = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)).double()
    x0 = (x0 * config.vae_scaling_factor)[:, :, None].repeat(1, 1, config.num_frames, 1, 1)
    betas = torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    timesteps = respaced_timesteps(config.num_train_timesteps, steps)
    assert len(seen) == len(timesteps) == steps
    for k, t in enumerate(timesteps):
        noise = torch.randn(x0.shape, generator=generator).double()
        expected = alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * noise
        if t > 0:
            torch.randn(latent_shape, generator=generator)
        # fp32 alphas_cumprod over 1000 factors: relative error <= 1000 * 2**-24 (6e-5), halved by the square root
        tolerance = 3e-5 * float(expected.abs().max()) + 1e-6
        assert seen[k].shape == latent_shape
        torch.testing.assert_close(seen[k].double(), expected, rtol=0, atol=tolerance)
    assert not torch.allclose(seen[0][:, :, 0], seen[0][:, :, 1])  # each frame its own noise

    first, first_frames = _exemplar_inputs(pipeline, image=image, prompt="a dog on the beach", entity="dog",
                                           seed=seed, steps=steps, exemplar_frames="first")
    assert [tensor.shape[2] for tensor in first] == [1] * steps
    assert not np.array_equal(first_frames, frames)


def test_generation_through_the_runner(tiny_generator, tmp_path):
    from videobench.generation import run_generation
    from videobench.suites import load_suite

    suite = load_suite("smoke", tmp_path / "data")
    cases = list(suite.cases[:2])
    summary = run_generation(tiny_generator, suite, cases, tmp_path / "out", seed=1, progress=False)
    assert summary.generated == [case.case_id for case in cases] and not summary.failed
    run = json.loads((summary.method_dir / "run.json").read_text())
    assert run["run_name"] == "videobooth-tiny" and run["config"]["native_size"] is True
    assert TINY_CONFIG.num_frames == 4


def test_mapper_file_holds_the_published_parameter_count():
    """``mapper.pt`` (yumingj/VideoBooth_models) holds ``model`` and ``ema``, each 97.64 M parameters (the published
    size: 2 x 97.64 M fp32). At real size (SD 1.4's UNet, CLIP ViT-L/14 widths, meta device) the tensors the loader
    expects in one of them are the mapper heads plus the 96 attention projections it overrides or adds."""
    from baselines.videobooth_model import mapper_key_map

    with torch.device("meta"):
        video = VideoBoothUNet3D(UNetConfig.from_sd_unet_config(SD14_UNET))
        mapper = VideoBoothMapper()  # upstream's Mapper(input_dim=1024, output_dim=768), 5 embeddings
    shapes = video.state_dict()
    projections = sum(shapes[target].numel() for target in mapper_key_map(video).values())
    heads = sum(parameter.numel() for parameter in mapper.parameters())
    assert round((projections + heads) / 1e6, 2) == 97.64
