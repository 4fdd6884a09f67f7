"""CLIP-T, CLIP-I and T.Cons from one CLIP image pass over the video (open_clip).

Definitions, as in the subject-driven video literature (the paper, section 6; DreamBooth; VBench):

* CLIP-T  = 1/T * sum_t cos(E_img(f_t), E_txt(prompt))                 -- text alignment, over all frames;
* CLIP-I  = 1/(R*T) * sum_r sum_t cos(E_img(ref_r), E_img(f_t))        -- subject fidelity, all (ref, frame) pairs;
* T.Cons  = 1/(T-1) * sum_t cos(E_img(f_t), E_img(f_{t+1}))            -- temporal consistency.

The default model is ViT-B/32 with OpenAI's weights, built as open_clip ``ViT-B-32-quickgelu`` (OpenAI's towers use
QuickGELU). Images are preprocessed as open_clip does for the chosen model and pretrained tag (its image size, resize mode,
interpolation, mean/std: :meth:`~videobench.metrics.preprocess.Preprocess.from_open_clip`; for ViT-B/32 OpenAI:
short side to 224 bicubic, centre crop 224, CLIP mean/std), batched on the device. Values are raw cosines in
[-1, 1].
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from videobench.metrics.base import MetricInput
from videobench.metrics.model_metric import (
    ModelBuilder,
    ModelMetric,
    WeightsStamp,
    cpu_workers_option,
    with_weights_option,
)
from videobench.metrics.preprocess import (
    EmbeddingMemo,
    ImageEmbedder,
    Preprocess,
    frames_to_tensor,
    precision_context,
    seeded,
)
from videobench.metrics.registry import ColumnSpec, register_metric
from videobench.options import echo, option
from videobench.plugins import lazy_module
from videobench.weights import WeightsLoadError, WeightSpec, describe_load_error

# imported on first use: describing the family (options, weights) needs no torch
if TYPE_CHECKING:
    import torch

    from videobench.metrics import class_token
else:
    torch = lazy_module("torch")
    class_token = lazy_module("videobench.metrics.class_token")

DEFAULT_CLIP_MODEL = "ViT-B-32-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"
#: Weights-folder file stems of the usual models (others: ``clip_<model>_<pretrained>``).
_KNOWN_CLIP_STEMS = {
    ("ViT-B-32-quickgelu", "openai"): "clip_vit_b32_openai",
    ("ViT-B-32", "openai"): "clip_vit_b32_openai",
}
#: The hub repository open_clip downloads the usual models from (its ``get_pretrained_cfg(...)["hf_hub"]``), so that
#: describing the default family needs no open_clip import; others are asked of open_clip.
_KNOWN_CLIP_HF_REPOS = {
    ("ViT-B-32-quickgelu", "openai"): "timm/vit_base_patch32_clip_224.openai",
    ("ViT-B-32", "openai"): "timm/vit_base_patch32_clip_224.openai",
}


def clip_file_stem(model: str, pretrained: str) -> str:
    """The weights-folder file stem for an open_clip model + pretrained tag."""
    known = _KNOWN_CLIP_STEMS.get((model, pretrained))
    if known:
        return known
    return "clip_" + re.sub(r"[^a-z0-9]+", "_", f"{model}_{pretrained}".lower()).strip("_")


def clip_hf_repo(model: str, pretrained: str) -> str | None:
    """The Hugging Face repository open_clip downloads ``model``/``pretrained`` from, if any."""
    if (model, pretrained) in _KNOWN_CLIP_HF_REPOS:
        return _KNOWN_CLIP_HF_REPOS[model, pretrained]
    import open_clip

    try:
        cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    except Exception:  # unknown model names have no hub entry
        return None
    hub = cfg.get("hf_hub") or ""
    repo = hub.rstrip("/")
    if not repo:
        return None
    # "org/name/" is a repo with open_clip's default file names; "org/name/file" names one file.
    return repo if hub.endswith("/") or repo.count("/") == 1 else os.path.dirname(repo)


@dataclass(frozen=True)
class ClipOptions:
    """Options of the ``clip`` family (``-M clip.model=ViT-L-14 -M clip.pretrained=openai``)."""

    model: str = option(DEFAULT_CLIP_MODEL, "open_clip architecture (preprocessing follows the model)")
    pretrained: str = option(DEFAULT_CLIP_PRETRAINED, "open_clip pretrained tag (names the weights and their "
                                                      "normalisation)")
    weights: Path | None = option(None, "an open_clip / OpenAI state dict file (else the weights folder or caches)")
    batch_size: int = option(64, "images per forward pass", minimum=1)
    cpu_workers: int = cpu_workers_option("embed frames")

    def __post_init__(self) -> None:
        """Only architectures open_clip knows (its built-in or registered configs), never a path."""
        if any(self.model == model for model, _ in _KNOWN_CLIP_HF_REPOS):  # built-in configs: no open_clip import
            return
        import open_clip

        if self.model not in open_clip.list_models():
            raise ValueError(f"model {echo(self.model)} is not an open_clip architecture (`open_clip.list_models()`, "
                             f"e.g. {DEFAULT_CLIP_MODEL})")


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded" warning: we load (or stamp random) weights ourselves."""

    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_clip_model(
    model_name: str = DEFAULT_CLIP_MODEL, weights: str | Path | None = None, seed: int = 0
) -> torch.nn.Module:
    """An open_clip model, random-initialised with ``seed`` and then loaded from ``weights`` when given.

    ``weights`` is an open_clip / OpenAI state dict (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)`` by open_clip's own :func:`open_clip.load_checkpoint`).
    """
    import open_clip

    with _quiet_open_clip(), seeded(seed):
        model = open_clip.create_model(model_name, pretrained=None)
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
        except Exception as error:
            raise WeightsLoadError(
                f"{weights}: cannot load into open_clip {model_name}: {describe_load_error(error)}"
            ) from error
    return model.eval()


def encode_text_prefix(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text(tokens)`` computed on the tokens up to the pooled one.

    The text tower's attention is causal and the embedding is the pooled token's (OpenAI's end-of-text token:
    ``argmax`` pooling, or ``eos``): nothing after it reaches it, so the padding after the longest prompt's pooled
    token (57 of CLIP's 77 positions for a 20-token prompt) is left out. The same function up to float rounding
    (the matrix products have fewer rows). Any other model or pooling runs ``model.encode_text`` itself.
    """
    import open_clip

    pool = getattr(model, "text_pool_type", None)
    mask = getattr(model, "attn_mask", None)
    if (type(model).encode_text is not open_clip.CLIP.encode_text or pool not in ("argmax", "eos")
            or mask is None or not _is_causal(mask)):
        return model.encode_text(tokens)
    pooled = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(pooled.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :length]).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), pooled]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _is_causal(mask: torch.Tensor) -> bool:
    """Whether an additive attention mask lets each position see itself and the positions before it only."""
    blocked = torch.isinf(mask) & (mask < 0)
    return bool(torch.equal(blocked, torch.ones_like(blocked).triu(1)))


@register_metric
class ClipMetric(ImageEmbedder, ModelMetric):
    """The ``clip`` family: ``clip_t``, ``clip_i`` and ``t_cons`` from one image-embedding pass."""

    family = "clip"
    description = "CLIP-T, CLIP-I and T.Cons from one open_clip image pass (default ViT-B/32, OpenAI weights)"
    column_specs = (
        ColumnSpec("clip_t", "CLIP-T", "mean cosine of each frame's CLIP embedding with the prompt's", order=10),
        ColumnSpec("clip_i", "CLIP-I", "mean CLIP cosine over (reference image, frame) pairs", order=20),
        ColumnSpec("t_cons", "T.Cons", "mean CLIP cosine of consecutive frames", order=40),
    )
    Options = ClipOptions
    inputs = ("prompt", "references")  # what the cache key holds besides the video
    model: Any  # an open_clip ``CLIP`` (``encode_image`` / ``encode_text``; open_clip ships no type information)

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_name: str = DEFAULT_CLIP_MODEL,
        pretrained: str = DEFAULT_CLIP_PRETRAINED,
        batch_size: int = 64,
        preprocess: Preprocess | None = None,
        **stamp: Unpack[WeightsStamp],
    ) -> None:
        super().__init__(model, **stamp)
        self.tokenizer = tokenizer
        self.model_name, self.pretrained = model_name, pretrained
        self.batch_size = batch_size
        self._memo = EmbeddingMemo()  # references recur across a subject's cases
        self.preprocess = preprocess or Preprocess.from_open_clip(model, model_name, pretrained)

    @classmethod
    def weight_specs(cls, options: ClipOptions) -> list[WeightSpec]:
        stem = clip_file_stem(options.model, options.pretrained)
        spec = WeightSpec(
            key=cls.weight_key, model=f"CLIP {options.model} ({options.pretrained}), open_clip",
            file_names=(f"{stem}.safetensors", f"{stem}.bin", f"{stem}.pt"),
            hf_repo=clip_hf_repo(options.model, options.pretrained),
            hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
            formats="an open_clip or OpenAI state dict (safetensors, .bin, .pt); not OpenAI's TorchScript archive",
        )
        return [with_weights_option(spec, options, cls.family)]

    @classmethod
    def _model_builder(cls, options: ClipOptions) -> ModelBuilder:
        return functools.partial(build_clip_model, options.model)

    @classmethod
    def _from_model(cls, model: torch.nn.Module, options: ClipOptions, stamp: WeightsStamp) -> ClipMetric:
        """Add the model's tokenizer and names; ``pretrained`` reads ``random`` for random weights."""
        import open_clip

        pretrained = "random" if stamp["random_weights"] else options.pretrained
        return cls(model, open_clip.get_tokenizer(options.model), model_name=options.model, pretrained=pretrained,
                   batch_size=options.batch_size,
                   preprocess=Preprocess.from_open_clip(model, options.model, options.pretrained), **stamp)

    def config(self) -> dict[str, Any]:
        return {
            **self._base_config(f"open_clip:{self.model_name}"),
            "pretrained": self.pretrained,
            "preprocess": self.preprocess.config(),
        }

    # -- embeddings ---------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> CLIP image embeddings: ``encode_image``, with the last block computed for the
        class token only (:func:`~videobench.metrics.class_token.open_clip_class_token`)."""
        return class_token.open_clip_class_token(self.model, images)

    def embed_text(self, prompt: str) -> torch.Tensor:
        """``(D,)`` unit-norm CLIP text embedding of ``prompt`` (float32)."""
        tokens = self.tokenizer([prompt]).to(self.device)
        with torch.inference_mode(), precision_context(self.device, self.dtype):
            text = encode_text_prefix(self.model, tokens).float()
        return torch.nn.functional.normalize(text, dim=-1)[0]

    # -- the metric ---------------------------------------------------------------------------------------
    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        """Raw cosines for ``columns`` (default all three) plus ``num_frames`` / ``num_references``."""
        columns = self._check_columns(columns)
        frames = frames_to_tensor(sample.frames)
        if len(frames) == 0:
            raise ValueError("no frames to score")
        out: dict[str, float] = {"num_frames": float(len(frames))}
        image = self.embed_frames(frames)
        if "clip_t" in columns:
            out["clip_t"] = (image @ self.embed_text(sample.prompt)).mean().item()
        if "clip_i" in columns:
            if not sample.references:
                raise ValueError("clip_i needs at least one reference image")
            refs = self.embed_references(sample.references)
            out["clip_i"] = (refs @ image.T).mean().item()
            out["num_references"] = float(len(refs))
        if "t_cons" in columns:
            if len(image) < 2:
                raise ValueError(f"t_cons needs at least 2 frames, got {len(image)}")
            out["t_cons"] = (image[1:] * image[:-1]).sum(-1).mean().item()
        return out
