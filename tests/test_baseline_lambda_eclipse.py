"""lambda-eclipse+i2v: the λ-ECLIPSE prior, its concept-embedding step, official-layout loading, the tiny preset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from baselines.lambda_eclipse import (
    CLIP_BIGG,
    CLIP_KEY,
    DECODER_KEY,
    KANDINSKY_DECODER,
    KANDINSKY_PRIOR,
    LAMBDA_ECLIPSE_PRIOR,
    NAME,
    PAPER_ROW,
    PRIOR_KEY,
    TINY_PRIOR,
    LambdaEclipse,
    LambdaEclipseOptions,
    build_personalizer,
    build_tiny_components,
    weight_specs,
)
from baselines.lambda_eclipse_model import (
    PRIOR_WEIGHTS_FILE,
    LambdaEclipsePrior,
    LambdaPriorConfig,
    build_tiny_clip_tokenizer,
    concept_positions,
    concept_token_ids,
    insert_concept_embeddings,
    load_prior,
    save_prior,
)
from baselines.two_stage import I2V_WEIGHT_KEY, TwoStageGenerator
from videobench.cases import Case
from videobench.methods import MethodContext, get_method
from videobench.options import OptionError
from videobench.weights import WeightsLoadError, check_weights

PROMPT = "a red circle bouncing from left to right across a white background"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs tiny models: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


def shape_image(color: tuple[int, int, int], size: int = 96) -> Image.Image:
    """A coloured disc on white, like the smoke suite's references."""
    y, x = np.mgrid[0:size, 0:size]
    disc = (x - size / 2) ** 2 + (y - size / 2) ** 2 <= (0.35 * size) ** 2
    pixels = np.full((size, size, 3), 255, np.uint8)
    pixels[disc] = color
    return Image.fromarray(pixels)


RED, BLUE = shape_image((220, 30, 30)), shape_image((30, 60, 220))


def personaliser(components, **kwargs) -> LambdaEclipse:
    settings = {"steps": 2, "height": 64, "width": 64, "random_weights": True} | kwargs
    return LambdaEclipse(components, **settings)


# ------------------------------------------------------------------------------------------------ the prior


def test_published_prior_layout_and_size():
    """The published checkpoint is diffusers 0.20's PriorTransformer minus the time embedding plus
    ``embedding_control``; at the published config it has 34.85M parameters (the 139 MB fp32 safetensors)."""
    from diffusers import PriorTransformer

    config = LambdaPriorConfig()
    with torch.device("meta"):
        ours = LambdaEclipsePrior(config)
        unclip = PriorTransformer(num_attention_heads=16, attention_head_dim=32, num_layers=10, embedding_dim=1280,
                                  num_embeddings=77, additional_embeddings=4)
    ours_keys, unclip_keys = set(ours.state_dict()), set(unclip.state_dict())
    assert ours_keys - unclip_keys == {"embedding_control.weight", "embedding_control.bias"}
    assert {key.split(".")[0] for key in unclip_keys - ours_keys} == {"time_embedding"}
    shapes = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert shapes["positional_embedding"] == (1, 81, 512) and shapes["proj_to_clip_embeddings.weight"] == (1280, 512)
    assert sum(p.numel() for p in ours.parameters()) == 34_849_536
    assert config.to_json_dict()["_class_name"] == "PriorTransformer"


def naive_prior(prior: LambdaEclipsePrior, noise, text_embeds, hidden, mask, control) -> torch.Tensor:
    """The prior written out by hand: explicit multi-head attention with the additive padding + causal mask."""
    config, sd = prior.config, {k: v.double() for k, v in prior.state_dict().items()}

    def linear(x, name):
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def norm(x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])

    tokens = torch.cat([linear(hidden, "encoder_hidden_states_proj"), linear(control, "embedding_control")[:, None],
                        linear(text_embeds, "embedding_proj")[:, None], linear(noise, "proj_in")[:, None],
                        sd["prd_embedding"].expand(noise.shape[0], -1, -1)], dim=1)
    x = tokens + sd["positional_embedding"]
    length, heads, head_dim = x.shape[1], config.num_attention_heads, config.attention_head_dim
    bias = torch.zeros(x.shape[0], length, length, dtype=x.dtype)
    for b in range(x.shape[0]):
        for i in range(length):
            for j in range(length):
                padded = j < config.num_embeddings and mask[b, j] == 0
                bias[b, i, j] = -10000.0 * padded + (-10000.0 if j > i else 0.0)
    for index in range(config.num_layers):
        p = f"transformer_blocks.{index}"
        h = norm(x, f"{p}.norm1")
        q, k, v = (linear(h, f"{p}.attn1.to_{n}").view(*h.shape[:2], heads, head_dim).transpose(1, 2) for n in "qkv")
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias[:, None], dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(h.shape)
        x = x + linear(attended, f"{p}.attn1.to_out.0")
        h = norm(x, f"{p}.norm3")
        x = x + linear(torch.nn.functional.gelu(linear(h, f"{p}.ff.net.0.proj")), f"{p}.ff.net.2")
    return linear(norm(x, "norm_out")[:, -1], "proj_to_clip_embeddings")


def test_prior_matches_naive_reference(tiny):
    prior, config = tiny.prior, TINY_PRIOR
    g = torch.Generator().manual_seed(1)
    dim, length = config.embedding_dim, config.num_embeddings
    noise, text_embeds, control = (torch.randn(2, dim, generator=g) for _ in range(3))
    hidden = torch.randn(2, length, dim, generator=g)
    mask = torch.zeros(2, length, dtype=torch.long)
    mask[0, :9], mask[1, :20] = 1, 1
    with torch.no_grad():
        got = prior(noise, text_embeds, hidden, mask, control)
        expected = naive_prior(prior, *(t.double() for t in (noise, text_embeds, hidden)), mask, control.double())
    assert got.shape == (2, dim)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
    # the padding mask matters: a padded position's content does not reach the output, a real one does
    changed_pad, changed_real = hidden.clone(), hidden.clone()
    changed_pad[0, 15] += 5.0
    changed_real[0, 3] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(prior(noise, text_embeds, changed_pad, mask, control)[0], got[0])
        assert not torch.allclose(prior(noise, text_embeds, changed_real, mask, control)[0], got[0])


def test_prior_roundtrip_through_published_layout(tmp_path, tiny):
    folder = save_prior(tiny.prior, tmp_path / "Lambda-ECLIPSE-Prior-v1.0")
    assert json.loads((folder / "config.json").read_text())["additional_embeddings"] == 4
    saved = load_file(str(folder / PRIOR_WEIGHTS_FILE))
    loaded = load_prior(folder)
    assert set(loaded.state_dict()) == set(saved)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_prior_load_errors_name_the_file(tmp_path, tiny):
    folder = save_prior(tiny.prior, tmp_path / "prior")
    weights = folder / PRIOR_WEIGHTS_FILE
    tensors = load_file(str(weights))
    tensors.pop("embedding_control.weight")
    save_file(tensors, str(weights))
    with pytest.raises(WeightsLoadError, match=r"diffusion_pytorch_model\.safetensors.*missing.*embedding_control"):
        load_prior(folder)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "time_embed_dim": 512}))
    with pytest.raises(WeightsLoadError, match=r"config\.json.*time_embed_dim"):
        load_prior(folder)
    (folder / "config.json").write_text(json.dumps({**config, "added_emb_type": None}))
    with pytest.raises(WeightsLoadError, match="added_emb_type"):
        load_prior(folder)
    with pytest.raises(WeightsLoadError, match="missing"):
        load_prior(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ concept embeddings


def test_tiny_tokenizer_is_clip_like():
    tokenizer = build_tiny_clip_tokenizer(model_max_length=32)
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0
    for word in ("circle", "square", "triangle", "dog", "backpack", "teddy"):
        assert len(concept_token_ids(tokenizer, word)) == 1, word
    ids = tokenizer(PROMPT.upper(), padding="max_length", truncation=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 32 and tokenizer.eos_token_id in ids
    assert ids == build_tiny_clip_tokenizer(model_max_length=32)(PROMPT, padding="max_length")["input_ids"]


def upstream_insertion(hidden: np.ndarray, input_ids: np.ndarray, concept_ids: list[int], embed: np.ndarray):
    """Upstream ``get_text_feats``: for every token id of the concept, overwrite all rows holding it."""
    hidden = hidden.copy()
    for token_id in concept_ids:
        hidden[np.where(input_ids == token_id)[0]] = embed
    return hidden


def test_concept_insertion_matches_upstream_loop():
    tokenizer = build_tiny_clip_tokenizer(model_max_length=32)
    prompt = "a teddy bear next to a dog and another teddy bear"
    ids = tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    concept = concept_token_ids(tokenizer, "teddy bear")
    assert len(concept) == 2
    g = torch.Generator().manual_seed(0)
    hidden, embed = torch.randn(1, 32, 16, generator=g), torch.randn(1, 16, generator=g)
    positions = concept_positions(ids, concept)
    assert positions.sum() == 4  # two words, twice each
    got = insert_concept_embeddings(hidden, positions, embed)
    expected = upstream_insertion(hidden[0].numpy(), ids[0].numpy(), concept, embed[0].numpy())
    np.testing.assert_array_equal(got[0].numpy(), expected)
    assert not concept_positions(ids, []).any()


def test_prior_inputs_put_the_subject_embedding_at_the_concept(tiny):
    stage1 = personaliser(tiny)
    subject = stage1.subject_embedding([RED])
    inputs = stage1.prior_inputs(PROMPT, "circle", subject)
    text = stage1.encode_text(PROMPT)
    positions = inputs["concept_positions"][0]
    circle = concept_token_ids(stage1.encoders.tokenizer, "circle")[0]
    assert positions.tolist() == (text.input_ids[0] == circle).tolist() and positions.sum() == 1
    hidden = inputs["text_hidden_states"][0]
    torch.testing.assert_close(hidden[positions], subject.expand(1, -1))
    torch.testing.assert_close(hidden[~positions], text.hidden_states[0][~positions])
    torch.testing.assert_close(inputs["text_embeds"], text.text_embeds)
    assert inputs["text_mask"].sum() == (text.input_ids[0] != 0).sum()  # padding is "!" (id 0)


def test_missing_concept_word_is_reported(tiny, caplog):
    stage1 = personaliser(tiny)
    inputs = stage1.prior_inputs("a dog on the beach", "circle", stage1.subject_embedding([RED]))
    assert not inputs["concept_positions"].any()
    assert "not (fully) in the prompt" in caplog.text


def test_reference_modes(tiny):
    first, mean = personaliser(tiny), personaliser(tiny, references="mean")
    both = first.encode_images([RED, BLUE])
    torch.testing.assert_close(first.subject_embedding([RED, BLUE]), both[:1])
    torch.testing.assert_close(mean.subject_embedding([RED, BLUE]), both.mean(0, keepdim=True))
    with pytest.raises(ValueError, match="at least one"):
        first.subject_embedding([])


# ----------------------------------------------------------------------------------- the personaliser


def test_personaliser_is_deterministic_and_conditioned_by_the_reference(tiny):
    stage1 = personaliser(tiny)
    red = stage1.personalize([RED], PROMPT, "circle", seed=3)
    assert red.mode == "RGB" and red.size == (64, 64)
    again = stage1.personalize([RED], PROMPT, "circle", seed=3)
    blue = stage1.personalize([BLUE], PROMPT, "circle", seed=3)
    other_seed = stage1.personalize([RED], PROMPT, "circle", seed=4)
    as_array = [np.asarray(image, dtype=np.int16) for image in (red, again, blue, other_seed)]
    assert np.array_equal(as_array[0], as_array[1])
    assert np.abs(as_array[0] - as_array[2]).mean() > 1.0
    assert np.abs(as_array[0] - as_array[3]).mean() > 1.0
    # the reference reaches the prior's output only through the concept positions
    embed_red = stage1.image_embedding([RED], PROMPT, "circle", 3)
    assert not torch.allclose(embed_red, stage1.image_embedding([BLUE], PROMPT, "circle", 3))
    no_concept = "a red dog bouncing from left to right across a white background"
    torch.testing.assert_close(stage1.image_embedding([RED], no_concept, "circle", 3),
                               stage1.image_embedding([BLUE], no_concept, "circle", 3))


# ------------------------------------------------------------------------- official layouts, real loader


def save_official_layouts(root: Path, components, encoders: str) -> dict[str, Path]:
    """The tiny components saved as the published folders: prior, CLIP (laion CLIPModel or Kandinsky prior
    sub-folders) and the diffusers Kandinsky 2.2 decoder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    enc = components.encoders
    prior = save_prior(components.prior, root / "prior")
    clip = root / "clip"
    size = enc.image_encoder.config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if encoders == "laion":
        config = CLIPConfig(text_config=enc.text_encoder.config.to_dict(),
                            vision_config=enc.image_encoder.config.to_dict(),
                            projection_dim=enc.text_encoder.config.projection_dim)
        model = CLIPModel(config)
        state = {**enc.text_encoder.state_dict(), **enc.image_encoder.state_dict(),
                 "logit_scale": model.logit_scale.detach()}
        model.load_state_dict(state, strict=True)
        model.save_pretrained(clip)
        # as in exports whose tower sub-configs carry transformers' default projection_dim (upstream passes
        # projection_dim=1280 for that reason): the top-level value must win
        saved = json.loads((clip / "config.json").read_text())
        for tower in ("text_config", "vision_config"):
            saved[tower]["projection_dim"] = 512
        (clip / "config.json").write_text(json.dumps(saved))
        enc.tokenizer.save_pretrained(clip)
        processor.save_pretrained(clip)
    else:
        enc.text_encoder.save_pretrained(clip / "text_encoder")
        enc.image_encoder.save_pretrained(clip / "image_encoder")
        enc.tokenizer.save_pretrained(clip / "tokenizer")
        processor.save_pretrained(clip / "image_processor")
    decoder = root / "decoder"
    components.decoder.save_pretrained(decoder)
    return {"prior": prior, "clip": clip, "decoder": decoder}


def loaded_from(paths: dict[str, Path], encoders: str, **options) -> LambdaEclipse:
    """Stage 1 built by the registered builder from the harness-resolved folders (explicit options)."""
    opts = LambdaEclipseOptions(prior_model=str(paths["prior"]), clip_model=str(paths["clip"]),
                                decoder_model=str(paths["decoder"]), encoders=encoders, height=64, width=64,
                                steps=2, stage="1", **options)
    context = MethodContext(device="cpu", dtype="fp32")
    context.weights = check_weights(weight_specs(opts, context))
    return build_personalizer(opts, context)


def assert_same_tensors(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    got, want = module.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("encoders", ["laion", "kandinsky-prior"])
def test_official_layouts_load_every_tensor(tmp_path, tiny, encoders):
    paths = save_official_layouts(tmp_path, tiny, encoders)
    stage1 = loaded_from(paths, encoders)
    assert_same_tensors(stage1.prior, tiny.prior)
    assert_same_tensors(stage1.encoders.text_encoder, tiny.encoders.text_encoder)
    assert_same_tensors(stage1.encoders.image_encoder, tiny.encoders.image_encoder)
    assert_same_tensors(stage1.decoder.unet, tiny.decoder.unet)
    assert_same_tensors(stage1.decoder.movq, tiny.decoder.movq)
    assert stage1.decoder.scheduler.config.beta_schedule == "linear"
    assert stage1.encoders.tokenizer("a circle")["input_ids"] == tiny.encoders.tokenizer("a circle")["input_ids"]
    assert stage1.random_weights is False and stage1.config()["encoders"] == encoders
    # the loaded stage 1 computes what the in-memory components compute
    reference = personaliser(tiny)
    torch.testing.assert_close(stage1.image_embedding([RED], PROMPT, "circle", 5),
                               reference.image_embedding([RED], PROMPT, "circle", 5))


def test_loading_refuses_incomplete_checkpoints(tmp_path, tiny):
    paths = save_official_layouts(tmp_path, tiny, "laion")
    clip_file = paths["clip"] / "model.safetensors"
    tensors = load_file(str(clip_file))
    save_file({k: v for k, v in tensors.items() if k != "text_projection.weight"}, str(clip_file),
              metadata={"format": "pt"})
    with pytest.raises(WeightsLoadError, match=r"clip.*text_projection"):
        loaded_from(paths, "laion")
    save_file(tensors, str(clip_file), metadata={"format": "pt"})

    unet_file = paths["decoder"] / "unet" / "diffusion_pytorch_model.safetensors"
    unet = load_file(str(unet_file))
    save_file({k: v for k, v in unet.items() if not k.startswith("conv_out")}, str(unet_file),
              metadata={"format": "pt"})
    with pytest.raises(WeightsLoadError, match=r"unet"):
        loaded_from(paths, "laion")


# ---------------------------------------------------------------------------- registration and options


def test_registration_metadata():
    spec = get_method(NAME)
    assert spec.kind == "two-stage" and "tiny" in spec.presets
    table1 = Path(__file__).resolve().parents[1] / "videobench" / "paper" / "table1.csv"
    with table1.open(encoding="utf-8") as handle:
        assert PAPER_ROW in {row["method"] for row in csv.DictReader(handle)}
    options = spec.parse_options({})
    assert isinstance(options, LambdaEclipseOptions)
    assert spec.metadata(options)["paper_row"] == PAPER_ROW
    assert (options.steps, options.guidance, options.height, options.width) == (50, 7.5, 512, 512)

    context = MethodContext()
    specs = {s.key: s for s in spec.weight_specs(options, context)}
    assert set(specs) == {PRIOR_KEY, CLIP_KEY, DECODER_KEY, I2V_WEIGHT_KEY}
    assert specs[PRIOR_KEY].hf_repo == LAMBDA_ECLIPSE_PRIOR and specs[PRIOR_KEY].layout == (
        "config.json", "diffusion_pytorch_model.safetensors")
    assert specs[CLIP_KEY].hf_repo == CLIP_BIGG and specs[DECODER_KEY].hf_repo == KANDINSKY_DECODER
    kandinsky = {s.key: s for s in spec.weight_specs(spec.parse_options({"encoders": "kandinsky-prior"}), context)}
    assert kandinsky[CLIP_KEY].hf_repo == KANDINSKY_PRIOR and "image_encoder/" in kandinsky[CLIP_KEY].layout
    assert [s.key for s in spec.weight_specs(spec.parse_options({"stage": "2"}), context)] == [I2V_WEIGHT_KEY]
    assert spec.weight_specs(options, MethodContext(preset="tiny")) == []


@pytest.mark.parametrize("raw, message", [  # the rules beyond types and bounds (those: tests/test_contract.py)
    ({"height": "500"}, "multiple of 64"),
])
def test_option_errors(raw, message):
    with pytest.raises(OptionError, match=message):
        get_method(NAME).parse_options(raw)


def test_tiny_preset_stage_1(tmp_path):
    """The tiny stage 1's own settings (the whole tiny run, its determinism and cost: tests/test_contract.py)."""
    reference = tmp_path / "00.png"
    RED.save(reference)
    case = Case(case_id="red_circle-p01", suite="smoke", subject="red_circle", prompt=PROMPT, entity="circle",
                references=(str(reference),))
    spec = get_method(NAME)
    generator = spec.factory(spec.parse_options({"i2v_steps": "1"}), MethodContext(preset="tiny", fps=8))
    assert isinstance(generator, TwoStageGenerator) and generator.run_name == f"{NAME}-tiny"
    assert generator.config()["options"]["encoders"] == "laion"
    image = generator.generate_image(case, seed=0)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert generator.stage1.config()["decoder_steps"] == 4
