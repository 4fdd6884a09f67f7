"""DINO-I: subject fidelity with self-supervised DINO ViT-S/16 features (DreamBooth's DINO metric, per frame).

DINO-I = 1/(R*T) * sum_r sum_t cos(phi(ref_r), phi(f_t)), where phi is the CLS token of DINO ViT-S/16 after the
final norm (timm ``vit_small_patch16_224`` with ``num_classes=0``: exactly DINO's ``VisionTransformer`` output).
Preprocessing is timm's evaluation transform of the model (its size, interpolation and ImageNet mean/std from
``timm.data.resolve_model_data_config``) with DreamBooth's crop fraction 224/256 instead of timm's 0.9: Resize(256,
bicubic), CenterCrop(224), ImageNet mean/std, as in DreamBooth's evaluation.

The original ``dino_deitsmall16_pretrain.pth`` loads as is: DINO's backbone uses timm's parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``) and has no head. Full training checkpoints (``teacher``/``student`` with ``backbone.``/``module.`` prefixes
and a projection ``head.``) are reduced to the backbone; timm's ``vit_small_patch16_224.dino`` safetensors also load.
"""

from __future__ import annotations

import functools
import inspect
import math
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
    seeded,
)
from videobench.metrics.registry import ColumnSpec, register_metric
from videobench.options import echo, option
from videobench.plugins import lazy_module
from videobench.weights import WeightSpec, build_loaded, load_state_dict, strip_prefixes

# imported on first use: describing the family (options, weights) needs no torch
if TYPE_CHECKING:
    import torch

    from videobench.metrics import class_token
else:
    torch = lazy_module("torch")
    class_token = lazy_module("videobench.metrics.class_token")

DINO_ARCH = "vit_small_patch16_224"
#: timm's name of DINO ViT-S/16 (architecture + pretrained tag: its data config is the model's own).
DINO_TIMM_NAME = f"{DINO_ARCH}.dino"
#: DreamBooth's DINO evaluation: Resize(256) + CenterCrop(224), i.e. timm's transform with crop_pct 224/256.
DREAMBOOTH_CROP_PCT = 0.875
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"


#: ``model_kwargs`` that would change what the model is, not its shape: never accepted from an option.
_FIXED_VIT_KWARGS = frozenset({"num_classes", "global_pool", "class_token", "no_embed_class", "reg_tokens",
                               "weight_init", "block_fn", "mlp_layer", "norm_layer", "act_layer", "embed_layer"})


def check_vit_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse ``model_kwargs`` that timm's ``VisionTransformer`` does not take as a plain number or flag.

    Accepted keys are the parameters of ``timm.models.vision_transformer.VisionTransformer.__init__`` whose default
    is an int, float or bool (the shape knobs: ``depth``, ``embed_dim``, ``num_heads``, ``mlp_ratio``, ...), less
    those that change what the output is (:data:`_FIXED_VIT_KWARGS`); an int takes a positive int, a float a finite
    number >= 0, a bool true/false, and ``embed_dim`` must split into ``num_heads``. Raises ``ValueError`` (reported as
    one option error naming the family) instead of a traceback from inside timm.
    """
    if not kwargs:  # timm's defaults are a working model: nothing to check, and no timm import to describe it
        return
    from timm.models.vision_transformer import VisionTransformer

    parameters = inspect.signature(VisionTransformer.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if type(p.default) in (bool, int, float) and name not in _FIXED_VIT_KWARGS}
    for key, value in kwargs.items():
        if key not in defaults:
            raise ValueError(f"model_kwargs: unknown key {echo(key)}; accepted: {', '.join(defaults)}")
        default = defaults[key]
        if type(default) is bool:
            ok = isinstance(value, bool)
        elif type(default) is int:
            ok = type(value) is int and value > 0
        else:
            ok = type(value) in (int, float) and math.isfinite(value) and value >= 0
        if not ok:
            wanted = {bool: "true or false", int: "a positive integer", float: "a finite number >= 0"}
            raise ValueError(f"model_kwargs: {key}={echo(value)}: expected {wanted[type(default)]}")
    embed_dim, heads = kwargs.get("embed_dim", defaults["embed_dim"]), kwargs.get("num_heads", defaults["num_heads"])
    if embed_dim % heads:
        raise ValueError(f"model_kwargs: embed_dim={embed_dim} does not split into num_heads={heads}")


@dataclass(frozen=True)
class DinoOptions:
    """Options of the ``dino`` family."""

    weights: Path | None = option(None, "dino_deitsmall16_pretrain.pth or timm's safetensors (else the weights "
                                        "folder or caches)")
    batch_size: int = option(64, "images per forward pass", minimum=1)
    cpu_workers: int = cpu_workers_option("embed frames")
    crop_pct: float = option(DREAMBOOTH_CROP_PCT, "centre-crop fraction of the resize (DreamBooth: 224/256)",
                             minimum=0.1, maximum=1.0)
    model_kwargs: dict = option(default_factory=dict, help="timm architecture overrides (tests: a shallow model)")

    def __post_init__(self) -> None:
        check_vit_kwargs(self.model_kwargs)


def dino_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original DINO / timm checkpoint keys -> timm ``vit_small_patch16_224(num_classes=0)`` keys."""
    state = strip_prefixes(raw, ("module.", "backbone."))
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def build_dino_model(
    weights: str | Path | None = None, seed: int = 0, arch: str = DINO_TIMM_NAME, **model_kwargs: Any
) -> torch.nn.Module:
    """A timm DINO ViT without classifier; loaded from ``weights`` (strictly) when given, else seeded random init.

    ``arch`` is timm's name (``vit_small_patch16_224.dino`` for DINO-I); ``model_kwargs`` override timm's
    architecture (tests use a shallow model; ``dynamic_img_size=True`` for any input size); they are part of the
    config.
    """
    import timm

    def factory() -> torch.nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)

    if weights is not None:
        return build_loaded(factory, dino_state_dict(load_state_dict(weights)), weights).eval()
    with seeded(seed):
        return factory().eval()


@register_metric
class DinoMetric(ImageEmbedder, ModelMetric):
    """The ``dino`` family: ``dino_i``."""

    family = "dino"
    description = "DINO-I: subject fidelity with DINO ViT-S/16 CLS features (DreamBooth's DINO metric)"
    column_specs = (
        ColumnSpec("dino_i", "DINO-I", "mean DINO ViT-S/16 cosine over (reference image, frame) pairs", order=30),
    )
    Options = DinoOptions
    inputs = ("references",)  # what the cache key holds besides the video (not the prompt)

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int = 64,
        preprocess: Preprocess | None = None,
        model_kwargs: dict[str, Any] | None = None,
        **stamp: Unpack[WeightsStamp],
    ) -> None:
        super().__init__(model, **stamp)
        self.batch_size = batch_size
        self._memo = EmbeddingMemo()  # references recur across a subject's cases
        self.preprocess = preprocess or Preprocess.from_timm(model, crop_pct=DREAMBOOTH_CROP_PCT)
        self.model_kwargs = dict(model_kwargs or {})

    @classmethod
    def weight_specs(cls, options: DinoOptions) -> list[WeightSpec]:
        spec = WeightSpec(
            key=cls.weight_key, model="DINO ViT-S/16 (timm vit_small_patch16_224)",
            file_names=("dino_deitsmall16_pretrain.pth", "dino_vits16.safetensors"),
            hf_repo="timm/vit_small_patch16_224.dino", hf_files=("model.safetensors", "pytorch_model.bin"),
            url=_DINO_URL, formats="the original DINO release (.pth) or timm's safetensors",
        )
        return [with_weights_option(spec, options, cls.family)]

    @classmethod
    def _model_builder(cls, options: DinoOptions) -> ModelBuilder:
        """``model_kwargs`` (timm architecture overrides) shape the network and stay in the config."""
        return functools.partial(build_dino_model, **options.model_kwargs)

    @classmethod
    def _from_model(cls, model: torch.nn.Module, options: DinoOptions, stamp: WeightsStamp) -> DinoMetric:
        return cls(model, batch_size=options.batch_size, model_kwargs=options.model_kwargs,
                   preprocess=Preprocess.from_timm(model, crop_pct=options.crop_pct), **stamp)

    def config(self) -> dict[str, Any]:
        config = {**self._base_config(f"timm:{DINO_ARCH}"), "preprocess": self.preprocess.config()}
        if self.model_kwargs:
            config["model_kwargs"] = self.model_kwargs
        return config

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> DINO CLS features: the model's forward, with the last block computed for the class
        token only (:func:`~videobench.metrics.class_token.timm_class_token`)."""
        return class_token.timm_class_token(self.model, images)

    def score(self, sample: MetricInput, columns: tuple[str, ...] | None = None) -> dict[str, float]:
        """``dino_i`` (mean cosine over all (reference, frame) pairs) plus ``num_frames`` / ``num_references``."""
        self._check_columns(columns)
        if not sample.references:
            raise ValueError("dino_i needs at least one reference image")
        frames = frames_to_tensor(sample.frames)
        if len(frames) == 0:
            raise ValueError("no frames to score")
        image = self.embed_frames(frames)
        refs = self.embed_references(sample.references)
        return {
            "dino_i": (refs @ image.T).mean().item(),
            "num_frames": float(len(frames)),
            "num_references": float(len(refs)),
        }
