"""ip-adapter+i2v: official checkpoint layouts at toy sizes through the real loading code, conditioning, presets."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from baselines import ip_adapter as ipa
from tests.numerics import chain_tolerance
from videobench.cases import Case
from videobench.methods import ImageFirstGenerator, MethodContext, get_method
from videobench.options import OptionError
from videobench.weights import MissingWeightsError, WeightsConfig, WeightsLoadError, check_weights

METHOD = "ip-adapter+i2v"
PROMPT = "a dog running on the beach"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache: every file must come from the test's folders."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def picture(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def run_pipe(pipe, steps: int = 2, **image_prompt) -> np.ndarray:
    return pipe(prompt=PROMPT, negative_prompt=ipa.UPSTREAM_NEGATIVE_PROMPT, height=ipa.TINY_SIZE,
                width=ipa.TINY_SIZE, num_inference_steps=steps, guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(5), output_type="np", **image_prompt).images[0]


# -------------------------------------------------------------------------------- naive upstream formulas


def naive_image_proj(state: dict[str, torch.Tensor], embeds: torch.Tensor) -> torch.Tensor:
    """``ImageProjModel.forward`` of tencent-ailab/IP-Adapter: Linear to 4 tokens, LayerNorm."""
    cross = state["norm.weight"].shape[0]
    tokens = F.linear(embeds, state["proj.weight"], state["proj.bias"]).reshape(embeds.shape[0], -1, cross)
    return F.layer_norm(tokens, (cross,), state["norm.weight"], state["norm.bias"])


def naive_resampler(state: dict[str, torch.Tensor], features: torch.Tensor, head_dim: int = 64) -> torch.Tensor:
    """``Resampler.forward`` of upstream ``resampler.py`` written out from the checkpoint's tensors."""
    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), state[prefix + ".weight"], state[prefix + ".bias"])

    inner = state["layers.0.0.to_q.weight"].shape[0]
    heads = inner // head_dim
    batch = features.shape[0]
    latents = state["latents"].repeat(batch, 1, 1)
    x = F.linear(features, state["proj_in.weight"], state["proj_in.bias"])

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, t.shape[1], heads, head_dim).transpose(1, 2)

    for layer in range(ipa.PLUS_DEPTH):
        attn, mlp = f"layers.{layer}.0.", f"layers.{layer}.1."
        x_n, lat_n = norm(x, attn + "norm1"), norm(latents, attn + "norm2")
        q = F.linear(lat_n, state[attn + "to_q.weight"])
        k, v = F.linear(torch.cat([x_n, lat_n], dim=1), state[attn + "to_kv.weight"]).chunk(2, dim=-1)
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        out = (weights @ split(v)).transpose(1, 2).reshape(batch, -1, inner)
        latents = latents + F.linear(out, state[attn + "to_out.weight"])
        hidden = F.gelu(F.linear(norm(latents, mlp + "0"), state[mlp + "1.weight"]))
        latents = latents + F.linear(hidden, state[mlp + "3.weight"])
    out = F.linear(latents, state["proj_out.weight"], state["proj_out.bias"])
    return norm(out, "norm_out")


# ----------------------------------------------------------------------------------- registration, options


def test_registered_as_two_stage_ip_adapter_row():
    spec = get_method(METHOD)
    assert spec.kind == "two-stage"
    assert spec.presets == ("tiny",)
    options = spec.parse_options({})
    metadata = spec.metadata(options)
    assert metadata["paper_row"] == "IP-Adapter" and metadata["kind"] == "two-stage"
    table = Path(__file__).resolve().parents[1] / "videobench" / "paper" / "table1.csv"
    with table.open(encoding="utf-8") as handle:
        assert "IP-Adapter" in {row["method"] for row in csv.DictReader(handle)}
    # upstream's values (README scale for multimodal prompts, generate()'s steps) are resolved at parse time, so
    # run.json records them
    assert metadata["options"]["scale"] == 0.5 and metadata["options"]["steps"] == 30
    json.dumps(metadata)


def test_defaults_follow_the_upstream_demos_per_variant():
    spec = get_method(METHOD)
    sd15 = spec.parse_options({})
    assert (sd15.variant, sd15.scale, sd15.steps, sd15.guidance, sd15.height, sd15.width, sd15.scheduler) == (
        "sd15", 0.5, 30, 7.5, 512, 512, "ddim")
    assert sd15.negative_prompt == "monochrome, lowres, bad anatomy, worst quality, low quality"
    assert sd15.prompt_prefix == "best quality, high quality, " and sd15.text_prompt and sd15.references == "first"
    xl = spec.parse_options({"variant": "sdxl-plus"})
    assert (xl.scale, xl.steps, xl.guidance, xl.height, xl.width, xl.scheduler) == (0.5, 30, 5.0, 1024, 1024, "base")
    given = spec.parse_options({"variant": "sdxl", "scale": "0.8", "steps": "12", "height": "768",
                                "scheduler": "ddim"})
    assert (given.scale, given.steps, given.height, given.width, given.scheduler) == (0.8, 12, 768, 1024, "ddim")


@pytest.mark.parametrize("raw,message", [  # the rules beyond types and bounds (those: tests/test_contract.py)
    ({"height": "500"}, "multiple of 8"),
])
def test_invalid_options_are_one_clear_error(raw, message):
    with pytest.raises(OptionError, match=message) as caught:
        get_method(METHOD).parse_options(raw)
    assert METHOD in str(caught.value)


# ----------------------------------------------------------------------------------------------- weights


def test_weight_specs_name_the_official_files():
    spec = get_method(METHOD)
    specs = {s.key: s for s in spec.weight_specs(spec.parse_options({}), MethodContext())}
    assert set(specs) == {"base", "ip_adapter", "image_encoder", "i2v"}
    assert specs["base"].folder and specs["base"].hf_repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert "unet/diffusion_pytorch_model.safetensors" in specs["base"].hf_files
    assert "text_encoder_2/" not in specs["base"].layout
    assert specs["ip_adapter"].hf_repo == "h94/IP-Adapter"
    assert specs["ip_adapter"].hf_files == ("models/ip-adapter_sd15.safetensors", "models/ip-adapter_sd15.bin")
    assert "IP-Adapter/models/ip-adapter_sd15.bin" in specs["ip_adapter"].file_names
    assert specs["image_encoder"].folder and specs["image_encoder"].layout == ("models/image_encoder/config.json",)
    assert specs["image_encoder"].hf_files == ("models/image_encoder/config.json",
                                               "models/image_encoder/model.safetensors")

    xl = {s.key: s for s in spec.weight_specs(spec.parse_options({"variant": "sdxl-plus", "stage": "1"}),
                                              MethodContext())}
    assert set(xl) == {"base", "ip_adapter", "image_encoder"}  # stage 1 only: no CogVideoX
    assert xl["base"].hf_repo == "stabilityai/stable-diffusion-xl-base-1.0" and "text_encoder_2/" in xl["base"].layout
    assert xl["ip_adapter"].hf_files[0] == "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors"
    assert xl["image_encoder"].layout == ("models/image_encoder/config.json",)  # ViT-H, not bigG
    big_g = {s.key: s for s in spec.weight_specs(spec.parse_options({"variant": "sdxl"}), MethodContext())}
    assert big_g["image_encoder"].layout == ("sdxl_models/image_encoder/config.json",)

    with_vae = {s.key: s for s in spec.weight_specs(spec.parse_options({"vae": "stabilityai/sd-vae-ft-mse"}),
                                                    MethodContext())}
    assert with_vae["vae"].explicit == "stabilityai/sd-vae-ft-mse"
    assert spec.weight_specs(spec.parse_options({}), MethodContext(preset="tiny")) == []


def test_explicit_paths_come_from_ip_adapter_dir(tmp_path):
    root = tmp_path / "IP-Adapter"
    (root / "models").mkdir(parents=True)
    (root / "models" / "ip-adapter_sd15.bin").write_bytes(b"x")
    options = get_method(METHOD).parse_options({"ip_adapter_dir": str(root)})
    assert ipa.adapter_weight_spec(options).explicit == str(root / "models" / "ip-adapter_sd15.bin")
    assert ipa.image_encoder_weight_spec(options).explicit == str(root)
    assert ipa.image_encoder_folder(options, root) == root / "models" / "image_encoder"
    own = get_method(METHOD).parse_options({"image_encoder": str(tmp_path / "enc"), "adapter": "/a.safetensors"})
    assert ipa.image_encoder_weight_spec(own).layout == ("config.json",)
    assert ipa.image_encoder_folder(own, tmp_path / "enc") == tmp_path / "enc"
    assert ipa.adapter_weight_spec(own).explicit == "/a.safetensors"


@pytest.mark.parametrize("use_option", [False, True])
def test_missing_image_encoder_is_reported_by_the_weight_specs(tmp_path, use_option):
    weights = tmp_path / "weights"
    root = weights / "IP-Adapter"
    (root / "models").mkdir(parents=True)
    (root / "models" / "ip-adapter_sd15.safetensors").write_bytes(b"placeholder")
    spec = get_method(METHOD)
    options = spec.parse_options({"stage": "1", **({"ip_adapter_dir": str(root)} if use_option else {})})
    with pytest.raises(MissingWeightsError) as caught:
        check_weights(spec.weight_specs(options, MethodContext()), WeightsConfig(weights_dir=weights))
    message = str(caught.value)
    assert "image encoder" in message and "lacks models/image_encoder/config.json" in message
    assert "[ip_adapter]" not in message  # the adapter itself was found
    assert {resolved.spec.key for resolved in caught.value.missing} == {"base", "image_encoder"}


# ------------------------------------------------------------------------------------ checkpoint loading


@pytest.mark.parametrize("variant,suffix", [
    ("sd15", "safetensors"), ("sd15", "bin"), ("sd15-plus", "safetensors"), ("sd15-plus", "bin"),
    ("sdxl", "safetensors"), ("sdxl-plus", "bin"),
])
@pytest.mark.numerics
def test_official_layout_lands_in_processors_and_projection(tmp_path, variant, suffix):
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

    spec = ipa.VARIANTS[variant]
    pipe = ipa.build_tiny_pipeline(spec.family)
    state = ipa.random_adapter_state_dict(pipe.unet, pipe.image_encoder.config, spec.plus, seed=3)
    indices = sorted(int(key.split(".")[0]) for key in state["ip_adapter"] if key.endswith("to_k_ip.weight"))
    assert indices == list(range(1, 2 * len(indices), 2))  # upstream's ModuleList positions of the attn2 layers
    assert len(indices) == (8 if spec.family == "sdxl" else 4)
    path = ipa.save_adapter(state, tmp_path / f"{Path(spec.adapter).name}.{suffix}")
    ipa.load_adapter(pipe, path, spec.plus)

    processors = pipe.unet.attn_processors
    for index, name, _ in ipa.cross_attention_layers(pipe.unet):
        processor = processors[name]
        assert isinstance(processor, IPAdapterAttnProcessor2_0)
        assert torch.equal(processor.to_k_ip[0].weight, state["ip_adapter"][f"{index}.to_k_ip.weight"])
        assert torch.equal(processor.to_v_ip[0].weight, state["ip_adapter"][f"{index}.to_v_ip.weight"])
        assert processor.scale == [1.0]
    assert all(isinstance(p, AttnProcessor2_0) for n, p in processors.items() if n.endswith("attn1.processor"))
    assert len(ipa.cross_attention_layers(pipe.unet)) == len(indices)  # the Resampler's attentions are not counted

    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    generator = torch.Generator("cpu").manual_seed(0)
    encoder = pipe.image_encoder.config
    with torch.no_grad():
        if spec.plus:
            features = torch.randn(2, 5, encoder.hidden_size, generator=generator)
            expected = naive_resampler(state["image_proj"], features)
        else:
            features = torch.randn(2, encoder.projection_dim, generator=generator)
            expected = naive_image_proj(state["image_proj"], features)
        # Resampler (plus): proj_in, per layer to_q, to_kv, q.k, weights.v, to_out and the two MLP products, proj_out;
        # the longest sum is the MLP's 4 * dim. ImageProjModel: one product over projection_dim. Errors are relative
        # to the output's magnitude (the final LayerNorm's scale).
        matmuls, length = (2 + 7 * ipa.PLUS_DEPTH, 4 * ipa.TINY_PLUS["dim"]) if spec.plus else (1, encoder.projection_dim)
        bound = chain_tolerance(matmuls, length) * float(expected.abs().max())
        torch.testing.assert_close(projection(features), expected, rtol=0, atol=bound)


def _tiny_state(plus: bool):
    pipe = ipa.build_tiny_pipeline("sd15")
    return pipe, ipa.random_adapter_state_dict(pipe.unet, pipe.image_encoder.config, plus, seed=1)


class NotATensor:
    """Pickled by reference: ``torch.load(weights_only=True)`` must refuse it."""


def test_wrong_checkpoints_are_refused_naming_the_file(tmp_path):
    pipe, state = _tiny_state(plus=False)

    def refused(changed: dict, name: str, match: str) -> None:
        path = ipa.save_adapter(changed, tmp_path / name)
        with pytest.raises(WeightsLoadError, match=match) as caught:
            ipa.load_adapter(pipe, path, plus=False)
        assert str(path) in str(caught.value)

    missing = {"image_proj": state["image_proj"],
               "ip_adapter": {k: v for k, v in state["ip_adapter"].items() if k != "3.to_v_ip.weight"}}
    refused(missing, "missing.safetensors", r"missing ip_adapter key\(s\) \(e\.g\. 3\.to_v_ip\.weight")
    shifted = {"image_proj": state["image_proj"],
               "ip_adapter": {f"{int(k.split('.')[0]) + 1}.{k.split('.', 1)[1]}": v
                              for k, v in state["ip_adapter"].items()}}
    refused(shifted, "shifted.bin", "unexpected ip_adapter key")
    narrow = {"image_proj": {**state["image_proj"], "proj.weight": state["image_proj"]["proj.weight"][:, :8]},
              "ip_adapter": state["ip_adapter"]}
    refused(narrow, "narrow.bin", r"shape mismatch.*image_proj\.proj\.weight")
    _, plus_state = _tiny_state(plus=True)
    refused(plus_state, "plus.safetensors", "IP-Adapter Plus checkpoint")

    flat = tmp_path / "training.bin"
    torch.save({"image_proj_model.proj.weight": torch.zeros(2, 2)}, flat)
    with pytest.raises(WeightsLoadError, match="not an IP-Adapter checkpoint.*README") as caught:
        ipa.load_adapter(pipe, flat, plus=False)
    assert str(flat) in str(caught.value)
    pickled = tmp_path / "pickled.bin"
    torch.save({"image_proj": {"x": NotATensor()}, "ip_adapter": {}}, pickled)
    with pytest.raises(WeightsLoadError, match=r"weights_only=True") as caught:
        ipa.load_adapter(pipe, pickled, plus=False)
    assert str(pickled) in str(caught.value)
    from safetensors.torch import save_file

    stray = tmp_path / "stray.safetensors"
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(stray))
    with pytest.raises(WeightsLoadError, match="unexpected key 'unet.conv_in.weight'"):
        ipa.load_adapter(pipe, stray, plus=False)
    with pytest.raises(WeightsLoadError, match="plain IP-Adapter checkpoint"):
        ipa.load_adapter(pipe, ipa.save_adapter(state, tmp_path / "plain.safetensors"), plus=True)


def test_official_sizes_known_answers():
    """The published checkpoints' sizes follow from the layout: ip-adapter_sd15 has 22.3M parameters (README: "only
    22M"; 44.6 MB in fp16), ip-adapter-plus_sd15 49.1M (98.2 MB), and SDXL has 70 cross-attention layers."""
    from diffusers import UNet2DConditionModel

    vit_h = SimpleNamespace(projection_dim=1024, hidden_size=1280)
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    plain = ipa.expected_adapter_shapes(sd15, vit_h.projection_dim, vit_h.hidden_size, plus=False)
    assert sum(math.prod(s) for group in plain.values() for s in group.values()) == 22_319_616
    # diffusers' module order (down, up, then mid), the order upstream trained with: 31 is the mid block
    assert [plain["ip_adapter"][f"{i}.to_k_ip.weight"][0] for i in (1, 11, 13, 29, 31)] == [320, 1280, 1280, 320, 1280]
    assert {int(k.split(".")[0]) for k in plain["ip_adapter"]} == set(range(1, 32, 2))
    assert plain["ip_adapter"]["1.to_k_ip.weight"] == (320, 768) and plain["image_proj"]["proj.weight"] == (3072, 1024)
    plus = ipa.expected_adapter_shapes(sd15, vit_h.projection_dim, vit_h.hidden_size, plus=True)
    assert sum(math.prod(s) for group in plus.values() for s in group.values()) == 49_087_488
    with torch.device("meta"):
        sdxl = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    xl = ipa.expected_adapter_shapes(sdxl, 1280, 1664, plus=False)  # bigG: projection 1280, hidden 1664
    assert len(xl["ip_adapter"]) == 140 and xl["image_proj"]["proj.weight"] == (4 * 2048, 1280)


# ---------------------------------------------------------------------------------------- conditioning


def test_scale_zero_is_exactly_the_pipeline_without_adapter(tmp_path):
    pipe, state = _tiny_state(plus=False)
    plain = run_pipe(pipe)
    ipa.load_adapter(pipe, ipa.save_adapter(state, tmp_path / "a.safetensors"), plus=False)
    pipe.set_ip_adapter_scale(0.0)
    assert np.array_equal(run_pipe(pipe, ip_adapter_image=picture(0)), plain)
    pipe.set_ip_adapter_scale(0.6)
    assert np.abs(run_pipe(pipe, ip_adapter_image=picture(0)) - plain).max() > 1e-3


@pytest.fixture(scope="module")
def tiny_personalizer():
    options = get_method(METHOD).parse_options({})
    personalizer = ipa.IPAdapterPersonalizer(options, MethodContext(preset="tiny"))
    personalizer.pipeline  # noqa: B018  (load once for the module)
    return personalizer


def _sharing(personalizer, **changes):
    """A personaliser with other options that reuses the loaded tiny pipeline."""
    other = ipa.IPAdapterPersonalizer(dataclasses.replace(personalizer.options, **changes), personalizer.context)
    other._pipeline = personalizer.pipeline
    return other


def test_personalizer_is_deterministic_and_conditioned_on_the_reference(tiny_personalizer):
    first = tiny_personalizer.personalize([picture(1)], PROMPT, "dog", seed=0)
    assert first.mode == "RGB" and first.size == (ipa.TINY_SIZE, ipa.TINY_SIZE)
    again = tiny_personalizer.personalize([picture(1)], PROMPT, "dog", seed=0)
    assert np.array_equal(pixels(first), pixels(again))
    other_reference = tiny_personalizer.personalize([picture(2)], PROMPT, "dog", seed=0)
    assert np.abs(pixels(first) - pixels(other_reference)).mean() > 0.5
    other_seed = tiny_personalizer.personalize([picture(1)], PROMPT, "dog", seed=1)
    assert np.abs(pixels(first) - pixels(other_seed)).mean() > 0.5
    other_prompt = tiny_personalizer.personalize([picture(1)], "a cat sleeping on a sofa", "cat", seed=0)
    assert np.abs(pixels(first) - pixels(other_prompt)).mean() > 0.5


def test_reference_modes(tiny_personalizer):
    one, two = picture(1), picture(2)
    first = pixels(tiny_personalizer.personalize([one, two], PROMPT, "dog", 0))
    assert np.array_equal(first, pixels(tiny_personalizer.personalize([one], PROMPT, "dog", 0)))  # only the first
    every = _sharing(tiny_personalizer, references="all")
    assert np.array_equal(pixels(every.personalize([one], PROMPT, "dog", 0)), first)  # one image: the same
    assert np.abs(pixels(every.personalize([one, two], PROMPT, "dog", 0)) - first).mean() > 1.0
    mean = _sharing(tiny_personalizer, references="mean")
    same_twice = pixels(mean.personalize([one, one], PROMPT, "dog", 0))  # equal up to batched-matmul rounding
    assert np.abs(same_twice - first).max() <= 2 and np.abs(same_twice - first).mean() < 0.05
    assert np.abs(pixels(mean.personalize([one, two], PROMPT, "dog", 0)) - first).mean() > 1.0
    with pytest.raises(ValueError, match="at least one reference"):
        tiny_personalizer.personalize([], PROMPT, "dog", 0)


def test_several_references_in_diffusers_concatenate_tokens_or_average(tiny_personalizer):
    """What diffusers 0.42 does with a list of images for ONE adapter (``all``): it keeps a ``num_images`` axis, and
    the projection gives ``num_images x 4`` tokens that the IP attention attends to together. ``mean`` hands the
    pipeline the average of the per-image encoder outputs (negatives: zeros, as for one image)."""
    pipe = tiny_personalizer.pipeline
    one, two = picture(1), picture(2)
    with torch.no_grad():
        listed = pipe.prepare_ip_adapter_image_embeds([[one, two]], None, "cpu", 1, True)[0]
        embed_dim = pipe.image_encoder.config.projection_dim
        assert listed.shape == (2, 2, embed_dim)  # (negative + positive, images, embedding)
        tokens = pipe.unet.encoder_hid_proj([listed])[0]
        assert tokens.shape == (2, 2, ipa.PLAIN_TOKENS, pipe.unet.config.cross_attention_dim)
        singles = [pipe.encode_image(image, "cpu", 1)[0] for image in (one, two)]
        averaged = ipa.image_prompt(pipe, [one, two], "mean", guidance=7.5)["ip_adapter_image_embeds"][0]
        assert averaged.shape == (2, 1, embed_dim)
        torch.testing.assert_close(averaged[1, 0], (singles[0][0] + singles[1][0]) / 2, rtol=1e-4, atol=1e-5)
        assert torch.count_nonzero(averaged[0]) == 0
        unguided = ipa.image_prompt(pipe, [one, two], "mean", guidance=1.0)["ip_adapter_image_embeds"][0]
        assert unguided.shape == (1, 1, embed_dim)


def test_text_prompt_follows_the_upstream_demo(tiny_personalizer):
    assert tiny_personalizer.text(PROMPT) == "best quality, high quality, " + PROMPT
    image_only = _sharing(tiny_personalizer, text_prompt=False)
    assert image_only.text(PROMPT) == "best quality, high quality"
    config = tiny_personalizer.config()
    assert config["scale"] == 0.5 and config["num_inference_steps"] == ipa.TINY_STEPS
    assert config["negative_prompt"] == ipa.UPSTREAM_NEGATIVE_PROMPT and config["references"] == "first"
    json.dumps(config)


def test_tiny_clip_tokenizer_is_offline_and_total():
    tokenizer = ipa.build_tiny_clip_tokenizer()
    ids = tokenizer("A dog, 3 cats & ünïcode!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert ids == ipa.build_tiny_clip_tokenizer()("A dog, 3 cats & ünïcode!").input_ids
    assert len(tokenizer(PROMPT * 10, truncation=True).input_ids) == ipa.TINY_TEXT_LENGTH


# ------------------------------------------------------------------------------ the real loading path


def _save_weights_folder(weights: Path, variant: str) -> object:
    """A weights folder with a tiny base model, an h94/IP-Adapter-like folder (adapter .bin + image encoder)."""
    spec = ipa.VARIANTS[variant]
    pipe = ipa.build_tiny_pipeline(spec.family)
    parts = {name: component for name, component in pipe.components.items()
             if name not in ("image_encoder", "feature_extractor", "safety_checker")}
    extra = {"safety_checker": None, "requires_safety_checker": False} if spec.family == "sd15" else {
        "add_watermarker": False}
    base = type(pipe)(**parts, image_encoder=None, feature_extractor=None, **extra)
    folder = weights / ipa.BASE_MODELS[spec.family].split("/")[-1]
    base.save_pretrained(folder)
    # model_index.json as published: SD 1.5 names a safety checker and a feature extractor whose folders a
    # --download does not fetch (the loader passes its own), SDXL names neither nor an image encoder
    index = json.loads((folder / "model_index.json").read_text())
    index.pop("image_encoder")
    if spec.family == "sd15":
        index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                     feature_extractor=["transformers", "CLIPImageProcessor"])
    else:
        index.pop("feature_extractor")
    (folder / "model_index.json").write_text(json.dumps(index))
    root = weights / ipa.IP_ADAPTER_FOLDER_NAME
    pipe.image_encoder.save_pretrained(root / spec.image_encoder)
    state = ipa.random_adapter_state_dict(pipe.unet, pipe.image_encoder.config, spec.plus, seed=7)
    ipa.load_adapter(pipe, ipa.save_adapter(state, root / f"{spec.adapter}.bin"), spec.plus)
    return pipe


@pytest.mark.parametrize("variant", ["sd15", "sdxl-plus"])
def test_real_loader_reads_the_folders_and_matches_the_in_memory_pipeline(tmp_path, variant):
    weights = tmp_path / "weights"
    reference = _save_weights_folder(weights, variant)
    spec = get_method(METHOD)
    options = spec.parse_options({"variant": variant, "stage": "1", "height": "64", "width": "64", "steps": "2",
                                  "scheduler": "ddim"})
    resolved = check_weights(spec.weight_specs(options, MethodContext()), WeightsConfig(weights_dir=weights))
    assert {key: r.source for key, r in resolved.items()} == {
        "base": "weights_dir", "ip_adapter": "weights_dir", "image_encoder": "weights_dir"}
    personalizer = ipa.IPAdapterPersonalizer(options, MethodContext(weights=resolved, dtype="fp32"))
    image = personalizer.personalize([picture(4)], PROMPT, "dog", seed=3)
    pipe = personalizer.pipeline
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.steps_offset == 1
    assert type(pipe.feature_extractor).__name__ == "CLIPImageProcessorPil"
    assert getattr(pipe, "safety_checker", None) is None

    reference.scheduler = ipa.upstream_ddim_scheduler()
    reference.set_ip_adapter_scale(options.scale)
    reference.set_progress_bar_config(disable=True)
    expected = reference(prompt=personalizer.text(PROMPT), negative_prompt=options.negative_prompt, height=64,
                         width=64, num_inference_steps=2, guidance_scale=options.guidance,
                         generator=torch.Generator("cpu").manual_seed(3), ip_adapter_image=picture(4)).images[0]
    assert np.array_equal(pixels(image), pixels(expected))


def test_encoder_folder_without_weights_is_one_clear_error(tmp_path):
    weights = tmp_path / "weights"
    _save_weights_folder(weights, "sd15")
    encoder = weights / "IP-Adapter" / "models" / "image_encoder" / "model.safetensors"
    encoder.unlink()
    spec = get_method(METHOD)
    options = spec.parse_options({"stage": "1", "height": "64", "width": "64", "steps": "1"})
    resolved = check_weights(spec.weight_specs(options, MethodContext()), WeightsConfig(weights_dir=weights))
    personalizer = ipa.IPAdapterPersonalizer(options, MethodContext(weights=resolved))
    with pytest.raises(WeightsLoadError, match="no image encoder weights") as caught:
        personalizer.pipeline  # noqa: B018
    assert str(encoder.parent) in str(caught.value)


# ------------------------------------------------------------------------------ through the generator


def test_tiny_preset_stage_1_with_several_references(tmp_path):
    """The tiny stage 1 on two references (the whole tiny run, its determinism and cost: tests/test_contract.py)."""
    spec = get_method(METHOD)
    generator = spec.factory(spec.parse_options({"i2v_steps": "1"}), MethodContext(preset="tiny"))
    assert isinstance(generator, ImageFirstGenerator) and generator.phases == ("image", "video")
    references = []
    for index in range(2):
        path = tmp_path / f"ref{index}.png"
        picture(10 + index, (60, 60)).save(path)
        references.append(str(path))
    case = Case(case_id="dog-0", suite="smoke", subject="dog", prompt=PROMPT, entity="dog",
                references=tuple(references))
    image = generator.generate_image(case, seed=0)
    assert image.mode == "RGB" and image.size == (ipa.TINY_SIZE, ipa.TINY_SIZE)
    config = generator.config()
    assert config["method"] == METHOD and config["preset"] == "tiny"
    assert config["options"]["variant"] == "sd15" and config["options"]["scale"] == 0.5
    assert "stage" not in config["options"]
