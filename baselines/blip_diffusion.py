"""``blip-diffusion+i2v``: BLIP-Diffusion (zero-shot subject-driven Stable Diffusion 1.5), then CogVideoX-5B-I2V.

The paper's Table 1 row "BLIP-Diffusion". Stage 1 makes one 512x512 image of the case's subject for its prompt with
the official weights ``Salesforce/blipdiffusion`` (diffusers layout), sampled as the official implementation
(salesforce/LAVIS ``BlipDiffusion.generate``, ``projects/blip-diffusion`` notebooks) does: PNDM, 50 steps,
guidance 7.5, LAVIS's negative prompt, the prompt "a <subject> <prompt>" repeated 20 times ("prompt_reps"), the
16 subject embeddings spliced in after its first word. Source and target subject category = the case's entity.
The networks are re-implemented for diffusers 0.42 / transformers 5 in :mod:`baselines.blip_diffusion_model`
(diffusers' own, deprecated ``BlipDiffusionPipeline`` no longer runs with transformers 5); docs/baselines/
blip-diffusion.md lists every deviation.

Weights (two :class:`~videobench.weights.WeightSpec`\\ s):

* ``blip_diffusion``: the ``Salesforce/blipdiffusion`` folder: ``model_index.json`` (``ctx_begin_pos``, ``mean``,
  ``std``), ``qformer/`` (``config.json`` + ``pytorch_model.bin``: Q-Former, CLIP ViT-L/14 and projection),
  ``text_encoder/`` (``config.json`` + ``pytorch_model.bin``), ``tokenizer/`` (CLIP BPE), ``unet/``, ``vae/``,
  ``scheduler/`` (PNDM), ``image_processor/``. Its ``controlnet/`` and ``vision_encoder/`` folders are not used
  and not downloaded. The ``.bin`` files hold plain tensors and load with ``torch.load(weights_only=True)``.
* ``qformer_tokenizer``: the Q-Former reads the subject word with BERT's uncased WordPiece tokenizer plus a
  ``[DEC]`` token (vocabulary 30523), which upstream fetches from the hub as ``bert-base-uncased`` at
  construction time; the blipdiffusion repository does not hold it. It is ``google-bert/bert-base-uncased``'s
  ``vocab.txt`` (+ ``tokenizer_config.json``), read from its resolved local folder.

Several reference images: BLIP-Diffusion takes one; ``-o reference=first`` (default) uses the case's first,
``-o reference=mean`` averages the subject embeddings of all of them (LAVIS's ``forward_ctx_embeddings`` with equal
ratios, its multi-image blending).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from baselines.blip_diffusion_config import CLIP_MEAN, CLIP_STD, NEGATIVE_PROMPT
from baselines.two_stage import TinyPresetModel, TwoStageOptions, register_two_stage
from costmodel.method_cost import StageCost
from toytokenizers import clip as toy_clip
from toytokenizers.corpus import corpus_words
from videobench.methods import MethodContext, gpu_dtype, resolve_torch_dtype
from videobench.options import option
from videobench.plugins import lazy_module
from videobench.weights import WeightsLoadError, WeightSpec, build_loaded, load_state_dict

# imported on first use: listing this method (options, presets, weights) does not load torch
torch = lazy_module("torch")
nets = lazy_module("baselines.blip_diffusion_model")  # the networks: built by a run, not to list the method

BLIP_DIFFUSION_REPO = "Salesforce/blipdiffusion"
#: What the folder must hold (the diffusers layout of ``BlipDiffusionPipeline``).
BLIP_DIFFUSION_LAYOUT = ("model_index.json", "qformer/", "text_encoder/", "tokenizer/", "unet/", "vae/",
                         "scheduler/", "image_processor/")
#: ``allow_patterns`` of the download: everything but ``controlnet/`` (1.45 GB) and the unused ``vision_encoder/``.
BLIP_DIFFUSION_FILES = ("model_index.json", "qformer/*", "text_encoder/*", "tokenizer/*", "unet/*", "vae/*",
                        "scheduler/*", "image_processor/*")
BERT_TOKENIZER_REPO = "google-bert/bert-base-uncased"
BERT_TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json")
WEIGHT_KEY = "blip_diffusion"
TOKENIZER_KEY = "qformer_tokenizer"
#: The token BLIP-2 adds to BERT's vocabulary (LAVIS ``Blip2Base.init_tokenizer``).
DECODER_TOKEN = "[DEC]"
#: transformers-format weight files of a component folder, preferred first (single files, then shard indexes).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class BlipDiffusionOptions(TwoStageOptions):
    """Stage 1 (BLIP-Diffusion) options; stage 2's come from :class:`TwoStageOptions`."""

    model: str | None = option(
        None, f"BLIP-Diffusion: a diffusers folder or hub id (default {BLIP_DIFFUSION_REPO} from the HF cache)")
    qformer_tokenizer: str | None = option(
        None, f"the Q-Former's BERT tokenizer: a folder with vocab.txt or a hub id (default {BERT_TOKENIZER_REPO})")
    steps: int = option(50, "PNDM steps (LAVIS notebooks and both pipelines' default: 50; diffusers' README "
                            "example: 25)", minimum=1)
    guidance: float = option(7.5, "classifier-free guidance scale (upstream: 7.5; <= 1 disables it)", minimum=0.0)
    negative_prompt: str = option(NEGATIVE_PROMPT, "negative prompt (upstream's list of artefacts)")
    prompt_strength: float = option(1.0, "upstream's prompt_strength: the prompt is repeated "
                                         "int(prompt_strength * prompt_reps) times", minimum=0.0)
    prompt_reps: int = option(20, "upstream's prompt_reps (see prompt_strength)", minimum=1)
    height: int = option(512, "stage-1 image height (upstream: 512; a multiple of 8)", minimum=8)
    width: int = option(512, "stage-1 image width (upstream: 512; a multiple of 8)", minimum=8)
    reference: Literal["first", "mean"] = option(
        "first", "several reference images: the first, or the mean of their subject embeddings (LAVIS's blending)")
    prompt_format: Literal["auto", "prefix"] = option(
        "prefix", "prefix: upstream's 'a {subject} {prompt}' (LAVIS _build_prompt) for every prompt; auto: a case "
                  "prompt opening with the subject ('a dog ...', 'a red dog ...') is used as it is, others get "
                  "'a <entity> ' in front")
    reference_crop: Literal["center", "squash"] = option(
        "center", "reference preprocessing: center (LAVIS: shorter side to 224, centre crop) or squash "
                  "(diffusers' BlipImageProcessor: resize to 224x224)")

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8 (the VAE's factor), got "
                             f"{self.height}x{self.width}")
        if int(self.prompt_strength * self.prompt_reps) < 1:
            raise ValueError(f"prompt_strength * prompt_reps = {self.prompt_strength * self.prompt_reps} < 1 "
                             "would drop the prompt")


def blip_diffusion_weight_specs(options: BlipDiffusionOptions, context: MethodContext) -> list[WeightSpec]:
    """The BLIP-Diffusion folder and the Q-Former's BERT tokenizer folder."""
    return [
        WeightSpec(
            key=WEIGHT_KEY, model="BLIP-Diffusion (diffusers layout)", folder=True,
            file_names=("blipdiffusion", "Salesforce--blipdiffusion"), layout=BLIP_DIFFUSION_LAYOUT,
            hf_repo=BLIP_DIFFUSION_REPO, hf_files=BLIP_DIFFUSION_FILES, explicit=options.model,
            option="-o model=FOLDER|HUB_ID", formats="diffusers folder; .bin (tensors only) or .safetensors",
        ),
        WeightSpec(
            key=TOKENIZER_KEY, model="BERT-base uncased tokenizer (BLIP-Diffusion's Q-Former)", folder=True,
            file_names=("bert-base-uncased",), layout=("vocab.txt",), hf_repo=BERT_TOKENIZER_REPO,
            hf_files=BERT_TOKENIZER_FILES, explicit=options.qformer_tokenizer,
            option="-o qformer_tokenizer=FOLDER|HUB_ID", formats="vocab.txt (+ tokenizer_config.json)",
        ),
    ]


# ------------------------------------------------------------------------------------------------ loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsLoadError(f"{path}: cannot read ({type(error).__name__}: {error})") from error


def component_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a transformers component folder (``model.safetensors`` / ``pytorch_model.bin`` or shards),
    with the ``position_ids`` buffers older transformers versions saved removed; returns ``(tensors, path)``."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            state, path = load_state_dict(folder / name), folder / name
            break
    else:
        for name in WEIGHT_INDEXES:
            if (folder / name).is_file():
                path = folder / name
                shards = sorted(set(_read_json(path).get("weight_map", {}).values()))
                if not shards:
                    raise WeightsLoadError(f"{path}: no weight_map")
                state = {}
                for shard in shards:
                    state.update(load_state_dict(folder / shard))
                break
        else:
            raise WeightsLoadError(f"{folder}: no weights file (expected {' or '.join(WEIGHT_FILES + WEIGHT_INDEXES)})")
    return {key: value for key, value in state.items() if not key.endswith("position_ids")}, path


#: The vision encoder's LayerNorm epsilon the weights were trained with: LAVIS ``eva_vit.py``/``clip_vit.py``
#: (``nn.LayerNorm(..., eps=1e-5)``). Salesforce/blipdiffusion's ``qformer/config.json`` omits it, so transformers
#: would fill in ``Blip2VisionConfig``'s default (1e-6).
LAVIS_VISION_LAYER_NORM_EPS = 1e-5


def load_subject_encoder(folder: Path) -> nets.BlipSubjectEncoder:
    """``qformer/``: ``Blip2Config`` + weights, assigned strictly (every key, every shape).

    A config without the vision ``layer_norm_eps`` (the published one) gets LAVIS's
    :data:`LAVIS_VISION_LAYER_NORM_EPS`; a config that states one keeps it.
    """
    from transformers import Blip2Config

    config = Blip2Config.from_pretrained(str(folder), local_files_only=True)
    raw = json.loads((folder / "config.json").read_text())
    if "layer_norm_eps" not in (raw.get("vision_config") or {}):
        config.vision_config.layer_norm_eps = LAVIS_VISION_LAYER_NORM_EPS
    state, path = component_state_dict(folder)
    return build_loaded(lambda: nets.BlipSubjectEncoder(config), state, path).eval()


def load_text_encoder(folder: Path) -> nets.ContextCLIPTextModel:
    """``text_encoder/``: ``CLIPTextConfig`` + weights (``text_model.*``), assigned strictly."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
    state, path = component_state_dict(folder)
    return build_loaded(lambda: nets.ContextCLIPTextModel(config), state, path).eval()


def load_qformer_tokenizer(folder: Path, vocab_size: int | None = None) -> Any:
    """BERT's uncased tokenizer from ``folder`` plus BLIP-2's ``[DEC]`` token (LAVIS ``init_tokenizer``).

    Raises:
        WeightsLoadError: when the folder holds no vocabulary, or its size does not fit the Q-Former's embeddings.
    """
    from transformers import BertTokenizer

    if not ((folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()):
        raise WeightsLoadError(f"{folder}: no BERT tokenizer (vocab.txt or tokenizer.json)")
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True, truncation_side="right")
    tokenizer.add_special_tokens({"bos_token": DECODER_TOKEN})
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise WeightsLoadError(f"{folder}: the tokenizer has {len(tokenizer)} tokens (with {DECODER_TOKEN}), the "
                               f"Q-Former's word embeddings {vocab_size}: not BLIP-2's BERT tokenizer")
    return tokenizer


def reference_preprocess(folder: Path, index: dict[str, Any], crop: str) -> nets.ReferencePreprocess:
    """The Q-Former's input transform: size from ``image_processor/``, mean/std from ``model_index.json`` (which
    the pipeline hands to the processor), else the processor's own, else CLIP's."""
    processor = _read_json(folder / "image_processor" / "preprocessor_config.json")
    size = processor.get("size", 224)
    size = size.get("height", size.get("shortest_edge", 224)) if isinstance(size, dict) else int(size)
    mean = index.get("mean") or processor.get("image_mean") or CLIP_MEAN
    std = index.get("std") or processor.get("image_std") or CLIP_STD
    return nets.ReferencePreprocess(size=int(size), mean=tuple(mean), std=tuple(std), crop=crop)


def load_sampler(folder: Path, tokenizer_folder: Path, *, crop: str = "center",
                 dtype: torch.dtype | None = None) -> nets.BlipDiffusionSampler:
    """BLIP-Diffusion from its diffusers folder, on the CPU in ``dtype`` (None: float32); nothing is downloaded."""
    dtype = dtype or torch.float32
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    folder, tokenizer_folder = Path(folder), Path(tokenizer_folder)
    index = _read_json(folder / "model_index.json")
    subject_encoder = load_subject_encoder(folder / "qformer").to(dtype)
    vocab_size = subject_encoder.embeddings.word_embeddings.num_embeddings
    return nets.BlipDiffusionSampler(
        subject_encoder=subject_encoder,
        text_encoder=load_text_encoder(folder / "text_encoder").to(dtype),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
        qformer_tokenizer=load_qformer_tokenizer(tokenizer_folder, vocab_size),
        unet=UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype,
                                                  local_files_only=True),
        vae=AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=dtype, local_files_only=True),
        scheduler=PNDMScheduler.from_pretrained(str(folder), subfolder="scheduler", local_files_only=True),
        preprocess=reference_preprocess(folder, index, crop),
        ctx_begin_pos=int(index.get("ctx_begin_pos", 2)),
    )


# ------------------------------------------------------------------------------------------- tiny preset

#: Sizes of the tiny preset (real: ViT-L/14 23 layers, Q-Former 12 x 768, 16 queries, CLIP-L text, SD 1.5).
TINY_TEXT_POSITIONS = 32
TINY_QUERY_TOKENS = 4
TINY_VISION: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28,
    "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
TINY_QFORMER: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "cross_attention_frequency": 1, "encoder_hidden_size": 32, "max_position_embeddings": 32}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "max_position_embeddings": TINY_TEXT_POSITIONS, "hidden_act": "quick_gelu"}
TINY_UNET: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (16, 16, 32),
    "layers_per_block": 1, "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3, "norm_num_groups": 8, "sample_size": 64}
#: LAVIS's ``BlipDiffusion.pndm_scheduler`` (= the blipdiffusion ``scheduler/scheduler_config.json``).
PNDM_CONFIG: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                               "set_alpha_to_one": False, "skip_prk_steps": True}
#: Image size and the most sampling steps of the tiny preset.
TINY_SIZE = 64
TINY_STEPS = 4


#: The tiny CLIP tokenizer's symbols: lower-case letters, digits and punctuation (CLIP lower-cases the prompt).
TINY_CLIP_ALPHABET = tuple(string.ascii_lowercase + string.digits + string.punctuation)


def tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of the tiny CLIP BPE tokenizer (``vocab.json`` / ``merges.txt`` contents).

    Every character and character + ``</w>`` is a token, and the merges spell out each word of the tiny corpus, so
    any ASCII text tokenises (unknown words as pieces), "a" is one token (``ctx_begin_pos`` = 2 holds) and the ids
    are the same on every machine.
    """
    return toy_clip.tiny_clip_vocab(TINY_CLIP_ALPHABET, corpus_words(), merge_rule="prefix")


def build_tiny_clip_tokenizer(model_max_length: int = TINY_TEXT_POSITIONS) -> Any:
    """An offline ``CLIPTokenizer`` (byte-level BPE) over :func:`tiny_clip_vocab`."""
    return toy_clip.tiny_clip_tokenizer(model_max_length, TINY_CLIP_ALPHABET, corpus_words(), merge_rule="prefix")


def tiny_bert_vocab() -> list[str]:
    """The tiny BERT vocabulary, in id order: BERT's specials, the tiny corpus words, characters and ``##`` pieces."""
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *corpus_words(), *characters,
              *("##" + c for c in string.ascii_lowercase + string.digits)]
    return list(dict.fromkeys(tokens))  # "a" is a word and a character


def build_tiny_bert_tokenizer() -> Any:
    """An offline uncased ``BertTokenizer`` over :func:`tiny_bert_vocab`, with ``[DEC]`` added as upstream does."""
    from transformers import BertTokenizer

    vocab = tiny_bert_vocab()
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": DECODER_TOKEN})
    return tokenizer


def tiny_configs(vocab_size: int, text_vocab_size: int) -> tuple[Any, Any]:
    """``(Blip2Config, CLIPTextConfig)`` of the tiny preset."""
    from transformers import Blip2Config, CLIPTextConfig

    blip2 = Blip2Config(vision_config=TINY_VISION, qformer_config={**TINY_QFORMER, "vocab_size": vocab_size},
                        num_query_tokens=TINY_QUERY_TOKENS)
    text = CLIPTextConfig(vocab_size=text_vocab_size, bos_token_id=text_vocab_size - 2,
                          eos_token_id=text_vocab_size - 1, pad_token_id=text_vocab_size - 1, **TINY_TEXT)
    return blip2, text


def build_tiny_sampler(seed: int = 0, crop: str = "center") -> nets.BlipDiffusionSampler:
    """A random-initialised BLIP-Diffusion at toy size (64x64 images, CPU-friendly), built from configs.

    The structure of the real one (CLIP ViT + Q-Former + projection, context CLIP text encoder, SD UNet and VAE,
    PNDM) with small widths and the offline tokenizers above.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    tokenizer = build_tiny_clip_tokenizer()
    qformer_tokenizer = build_tiny_bert_tokenizer()
    blip2, text = tiny_configs(len(qformer_tokenizer), len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        subject_encoder = nets.BlipSubjectEncoder(blip2)
        for name, parameter in subject_encoder.named_parameters():
            if name.endswith(("class_embedding", "position_embedding", "query_tokens")):
                torch.nn.init.normal_(parameter, std=0.5)  # zeros in the constructor (the checkpoint fills them)
        text_encoder = nets.ContextCLIPTextModel(text)
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
    return nets.BlipDiffusionSampler(
        subject_encoder=subject_encoder, text_encoder=text_encoder, tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer, unet=unet, vae=vae, scheduler=PNDMScheduler(**PNDM_CONFIG),
        preprocess=nets.ReferencePreprocess(size=TINY_VISION["image_size"], crop=crop), ctx_begin_pos=2,
    )


# ------------------------------------------------------------------------------------------- stage 1


#: How many words may stand between the article and the entity for a prompt to be used as it is ("a red dog").
MAX_MODIFIERS = 2


def subject_prompt(prompt: str, entity: str, prompt_format: str = "auto") -> tuple[str, str | None]:
    """``(prompt, subject)`` for :func:`~baselines.blip_diffusion_model.build_prompt`.

    Upstream builds ``"a {subject} {prompt}"`` from a prompt that does not name the subject ("swimming
    underwater") and splices the subject embeddings in after "a". Benchmark prompts already name it ("a dog
    swimming underwater", "a red backpack on the beach"). With ``auto``, a prompt whose first noun phrase is the
    subject (``a``/``an``, at most :data:`MAX_MODIFIERS` words, the entity) is used as it is: for "a dog ..." that
    is the very text and token positions upstream builds, and the embeddings still land in the subject's phrase
    ("a [subject] red backpack"). Any other prompt ("a drone shot circling a dog", "the dog ...") gets upstream's
    ``a <entity>`` in front. ``prefix`` always prepends it.
    """
    entity = entity.strip()
    if not entity:
        raise ValueError("BLIP-Diffusion needs the subject's category word (the case's entity), got ''")
    if prompt_format not in ("auto", "prefix"):
        raise ValueError(f"prompt_format {prompt_format!r}: auto or prefix")
    modifier = r"(?!(?:a|an|the)\s)\S+\s+"  # a word that is not an article (which would start another phrase)
    leading = rf"\s*an?\s+(?:{modifier}){{0,{MAX_MODIFIERS}}}{re.escape(entity)}\b"
    if prompt_format == "auto" and re.match(leading, prompt, re.IGNORECASE):
        return prompt.strip(), None
    return prompt.strip(), entity


class BlipDiffusionPersonalizer(TinyPresetModel):
    """Stage 1 of ``blip-diffusion+i2v`` (an :class:`~baselines.two_stage.ImagePersonalizer`)."""

    def __init__(self, options: BlipDiffusionOptions, context: MethodContext) -> None:
        self.options = options
        self.tiny = context.preset == "tiny"
        self.dtype = resolve_torch_dtype(context.dtype, context.device)
        if self.tiny:
            self.height = self.width = TINY_SIZE
            self.steps = min(options.steps, TINY_STEPS)
            sampler = build_tiny_sampler(crop=options.reference_crop)
        else:
            self.height, self.width, self.steps = options.height, options.width, options.steps
            folder, tokenizer_folder = context.weight_path(WEIGHT_KEY), context.weight_path(TOKENIZER_KEY)
            if folder is None or tokenizer_folder is None:
                raise RuntimeError("BLIP-Diffusion's weights were not resolved (the harness resolves them first)")
            sampler = load_sampler(folder, tokenizer_folder, crop=options.reference_crop, dtype=self.dtype)
        self.sampler = sampler.to(context.device, self.dtype)

    def config(self) -> dict[str, Any]:
        opts = self.options
        return {
            "stage1": "BLIP-Diffusion", "model": "tiny" if self.tiny else str(opts.model or BLIP_DIFFUSION_REPO),
            "qformer_tokenizer": "tiny" if self.tiny else str(opts.qformer_tokenizer or BERT_TOKENIZER_REPO),
            "scheduler": "PNDM", "steps": self.steps, "guidance": opts.guidance,
            "negative_prompt": opts.negative_prompt, "prompt_strength": opts.prompt_strength,
            "prompt_reps": opts.prompt_reps, "height": self.height, "width": self.width, "reference": opts.reference,
            "prompt_format": opts.prompt_format, "reference_crop": opts.reference_crop,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def personalize(self, references: Sequence[Image.Image], prompt: str, entity: str, seed: int) -> Image.Image:
        if not references:
            raise ValueError("BLIP-Diffusion needs a reference image")
        used = list(references) if self.options.reference == "mean" else [references[0]]
        text, subject = subject_prompt(prompt, entity, self.options.prompt_format)
        return self.sampler(
            prompt=nets.build_prompt(text, subject, self.options.prompt_strength, self.options.prompt_reps),
            references=used, subject=entity.strip(), negative_prompt=self.options.negative_prompt,
            guidance_scale=self.options.guidance, num_inference_steps=self.steps, height=self.height,
            width=self.width, generator=torch.Generator("cpu").manual_seed(seed),
        )


# ------------------------------------------------------------------------------------------- stage 1's cost

#: ``qformer/config.json`` of Salesforce/blipdiffusion (LAVIS ``BlipDiffusion``: CLIP ViT-L/14 without its last
#: layer, a BERT-base Q-Former with cross-attention in every layer, 16 queries; BERT's vocabulary + ``[DEC]``).
BLIP_DIFFUSION_QFORMER: dict[str, Any] = {
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu",
                      "layer_norm_eps": 1e-5},
    "qformer_config": {"vocab_size": 30523, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "cross_attention_frequency": 1, "encoder_hidden_size": 1024,
                       "max_position_embeddings": 512},
    "num_query_tokens": 16,
}
#: The Q-Former's input for a one-word subject: ``[CLS] word [SEP]``.
SUBJECT_TOKENS = 3


def stage1_cost(options: BlipDiffusionOptions, context: MethodContext) -> StageCost:
    """Stage 1's cost per video on FakeTensors (:mod:`costmodel.configs`), as :class:`BlipDiffusionSampler`
    runs: the subject encoder (ViT-L + Q-Former) on the reference, the context text encoder on the prompt (with the
    subject embeddings) and on the negative prompt, a UNet call on the CFG batch per PNDM timestep (steps + 1), one
    VAE decode; the tiny preset's components with ``context.preset == "tiny"``."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import Blip2Config, CLIPTextConfig

    from costmodel import configs as cm

    tiny = context.preset == "tiny"
    builder = cm.StageBuilder(gpu_dtype(context))
    if tiny:
        sampler = build_tiny_sampler(crop=options.reference_crop)
        encoder, text, unet, vae = (builder.adopt(module) for module in (
            sampler.subject_encoder, sampler.text_encoder, sampler.unet, sampler.vae))
        height = width = TINY_SIZE
        steps = min(options.steps, TINY_STEPS)
    else:
        encoder = builder.build(lambda: nets.BlipSubjectEncoder(Blip2Config(**BLIP_DIFFUSION_QFORMER)))
        text = builder.build(lambda: nets.ContextCLIPTextModel(CLIPTextConfig(**cm.CLIP_L_TEXT)))
        unet = builder.build(lambda: UNet2DConditionModel(**cm.SD15_UNET))
        vae = builder.build(lambda: AutoencoderKL(**cm.SD_VAE))
        height, width, steps = options.height, options.width, options.steps
    size = (TINY_VISION if tiny else BLIP_DIFFUSION_QFORMER["vision_config"])["image_size"]
    queries, length = encoder.num_query_tokens, text.max_positions
    cfg = options.guidance > 1.0

    def subject() -> torch.Tensor:
        return encoder(torch.randn(1, 3, size, size, dtype=builder.dtype), cm.token_ids(SUBJECT_TOKENS))

    def prompt() -> torch.Tensor:
        return text(cm.token_ids(length - queries), torch.randn(1, queries, text.text_model.config.hidden_size,
                                                                dtype=builder.dtype), 2)

    builder.add("subject encoder (ViT + Q-Former)", subject, 1, f"{size}x{size} reference, {queries} queries")
    builder.add("text encoder, prompt + subject", prompt, 1, f"{length - queries} tokens + {queries} subject tokens")
    if cfg:
        builder.add("text encoder, negative prompt", lambda: text(cm.token_ids(length)), 1, f"{length} tokens")
    calls = cm.denoiser_calls(PNDMScheduler(**PNDM_CONFIG), steps)
    cm.sd_stage(builder, unet, vae, steps=calls, cfg=cfg, height=height, width=width,
                context=(length, int(unet.config.cross_attention_dim)))
    return builder.cost("stage 1: BLIP-Diffusion (SD 1.5)" + (" (tiny)" if tiny else ""),
                        notes=f"{steps} PNDM steps ({calls} UNet calls), guidance {options.guidance}, "
                              f"{height}x{width}, {cm.dtype_name(builder.dtype)}")


def _build(options: BlipDiffusionOptions, context: MethodContext) -> BlipDiffusionPersonalizer:
    return BlipDiffusionPersonalizer(options, context)


register_two_stage(
    "blip-diffusion+i2v",
    description="BLIP-Diffusion (Salesforce/blipdiffusion: zero-shot subject-driven SD 1.5) + CogVideoX-5B-I2V",
    options=BlipDiffusionOptions, build_stage1=_build, stage1_weights=blip_diffusion_weight_specs,
    paper_row="BLIP-Diffusion", stage1_cost=stage1_cost, stage1_dtype="fp32",
)
