"""Shared helpers of the metric families: batched preprocessing on uint8 tensors, precision, seeding.

Preprocessing is equal to the PIL pipelines the metric models were made with.

open_clip's CLIP transform is ``Resize(224, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize(CLIP mean/std)``
and DINO's evaluation transform is ``Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize(ImageNet)``,
both on PIL images. :func:`preprocess` runs the same steps with ``torchvision.transforms.v2.functional`` on a
whole ``(N, 3, H, W)`` uint8 batch at once (on any device): the antialiased bicubic resize of a uint8 tensor
rounds back to uint8 as PIL does, so the result matches the PIL path up to a few intensity levels on some pixels
(tested against open_clip's own transform). Frames and reference images go through the *same* function, so a
frame equal to the reference gets exactly the reference's embedding.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from videobench.devices import check_device  # noqa: F401 (re-export: the metrics' device check)
from videobench.metrics.workers import SingleThreadWorkers, map_pieces, workers_for
from videobench.plugins import lazy_module

# imported on first use: describing a metric (options, weights) needs no torch
if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: How an image reaches the model's input size: open_clip's ``resize_mode`` names.
RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class Preprocess:
    """Resize (``resize_mode``), centre-crop ``crop`` (None: no crop), scale to [0, 1], normalise.

    * ``shortest``: the short side to ``resize`` (aspect kept), then the centre ``crop x crop``;
    * ``squash``: straight to ``resize x resize`` (aspect not kept; SigLIP);
    * ``longest``: the long side to ``resize``, then centre-padded to a square with ``fill``.

    ``antialias`` matches PIL's (True) or torchvision's tensor resize without it (VBench's DINO transform).
    """

    resize: int
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    antialias: bool = True
    fill: int = 0

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r}: one of {', '.join(RESIZE_MODES)}")

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return preprocess(images, self, dtype)

    @classmethod
    def from_open_clip(cls, model: torch.nn.Module, model_name: str, pretrained: str | None) -> Preprocess:
        """The transform open_clip itself would build for ``model`` with its ``pretrained`` tag's settings."""
        import open_clip

        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
        cfg.update({key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_cfg})
        size = cfg["size"]
        size = int(size if isinstance(size, int) else size[0])
        mode = cfg.get("resize_mode", "shortest")
        return cls(resize=size, crop=size if mode == "shortest" else None, mean=tuple(cfg["mean"]),
                   std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"), resize_mode=mode,
                   fill=int(cfg.get("fill_color", 0)))

    @classmethod
    def from_timm(cls, model: torch.nn.Module, crop_pct: float | None = None) -> Preprocess:
        """timm's evaluation transform of ``model`` (``resolve_model_data_config``), ``crop_pct`` overridable."""
        import timm

        cfg = timm.data.resolve_model_data_config(model)
        size = int(cfg["input_size"][-1])
        pct = crop_pct if crop_pct is not None else float(cfg.get("crop_pct", 1.0))
        return cls(resize=math.floor(size / pct), crop=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                   interpolation=cfg.get("interpolation", "bicubic"))


CLIP_PREPROCESS = Preprocess(224, 224, CLIP_MEAN, CLIP_STD)
DINO_PREPROCESS = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)


def preprocess(images: torch.Tensor, cfg: Preprocess, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 -> ``(N, 3, h, w)`` normalised ``dtype`` (None: float32) on the same device (see
    :class:`Preprocess`)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    from torchvision.transforms import InterpolationMode  # imported here: describing a metric needs no torchvision
    from torchvision.transforms.v2 import functional as TF

    mode = InterpolationMode(cfg.interpolation)
    if cfg.resize_mode == "squash":
        resized = TF.resize(images, [cfg.resize, cfg.resize], interpolation=mode, antialias=cfg.antialias)
    elif cfg.resize_mode == "longest":
        h, w = images.shape[-2:]
        scale = cfg.resize / max(h, w)
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        resized = TF.resize(images, size, interpolation=mode, antialias=cfg.antialias)
        pad_h, pad_w = cfg.resize - size[0], cfg.resize - size[1]
        resized = TF.pad(resized, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=cfg.fill)
    else:
        resized = TF.resize(images, [cfg.resize], interpolation=mode, antialias=cfg.antialias)
    cropped = TF.center_crop(resized, [cfg.crop, cfg.crop]) if cfg.crop else resized
    scaled = cropped.to(dtype or torch.float32) / 255.0
    return TF.normalize(scaled, list(cfg.mean), list(cfg.std))


def frames_to_tensor(frames: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 numpy -> ``(T, 3, H, W)`` uint8 tensor on ``device`` (copied once, as uint8)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if not frames.flags.writeable or not frames.flags.c_contiguous:
        frames = np.array(frames, copy=True, order="C")
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)


def image_to_tensor(image: Image.Image, device: str | torch.device = "cpu") -> torch.Tensor:
    """A PIL image -> ``(1, 3, H, W)`` uint8 tensor (converted to 8-bit RGB when needed)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return frames_to_tensor(np.asarray(image)[None], device)


#: ``dtype`` option -> the name of the autocast ``torch`` dtype (``None``: full fp32).
PRECISIONS: dict[str, str | None] = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def check_precision(device: str | torch.device, dtype: str) -> None:
    """fp16/bf16 autocast is for CUDA devices; CPU runs in fp32."""
    if dtype not in PRECISIONS:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(PRECISIONS)}")
    if PRECISIONS[dtype] is not None and torch.device(device).type != "cuda":
        raise ValueError(f"dtype {dtype!r} (autocast) needs a CUDA device, got {device!r}; use fp32 on CPU")


def precision_context(device: str | torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for fp16/bf16 on CUDA, else a no-op (fp32)."""
    check_precision(device, dtype)
    autocast_dtype = PRECISIONS[dtype]
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, autocast_dtype))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (random model initialisation) under ``torch.manual_seed(seed)`` without touching global RNGs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def embed_images(
    encode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | Sequence[torch.Tensor],
    cfg: Preprocess,
    *,
    batch_size: int,
    device: str | torch.device,
    dtype: str,
    workers: SingleThreadWorkers | None = None,
) -> torch.Tensor:
    """Preprocess uint8 images in chunks of ``batch_size`` and embed them with ``encode``.

    ``images`` is one ``(N, 3, H, W)`` tensor, or a sequence of ``(1, 3, H, W)`` tensors of any sizes (a subject's
    reference images): each is then resized and cropped on its own and the model inputs are batched together.
    With ``workers`` (CPU) each chunk is encoded in even pieces, one per worker
    (:mod:`videobench.metrics.workers`). Returns L2-normalised float32 embeddings ``(N, D)``; cosines are then
    plain dot products.
    """
    outputs = []
    with torch.inference_mode(), precision_context(device, dtype):
        if isinstance(images, torch.Tensor):
            chunks = (preprocess(chunk.to(device), cfg) for chunk in torch.split(images, batch_size))
        else:
            chunks = (torch.cat([preprocess(image.to(device), cfg) for image in images[start : start + batch_size]])
                      for start in range(0, len(images), batch_size))
        for chunk in chunks:  # preprocessed one batch at a time
            outputs += map_pieces(encode, chunk, workers)
    return torch.nn.functional.normalize(torch.cat(outputs).float(), dim=-1)


def content_digest(array: np.ndarray) -> str:
    """BLAKE2b (128-bit) hex digest of a C-contiguous array's bytes: the identity of an image's content, for
    :func:`distinct_images` and :class:`EmbeddingMemo` (which add the shape where it can differ)."""
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def distinct_images(images: torch.Tensor) -> tuple[list[int], list[int]]:
    """Images with the same bytes, found once: ``(firsts, inverse)`` with ``images[firsts]`` the distinct images in
    order of first appearance and ``images[i]`` equal (byte for byte) to ``images[firsts[inverse[i]]]``.

    A still shot, a frozen or a duplicated frame (a frame-rate conversion) repeats a frame's bytes; a metric that
    is a function of each image (an embedding, a RAFT pair's flow) computes it once per distinct image. Keyed by a
    BLAKE2b digest of each image's bytes (the shape is shared).
    """
    data = images.detach().cpu().contiguous().numpy()
    seen: dict[str, int] = {}
    firsts: list[int] = []
    inverse: list[int] = []
    for index, image in enumerate(data):
        key = content_digest(image)
        if key not in seen:
            seen[key] = len(firsts)
            firsts.append(index)
        inverse.append(seen[key])
    return firsts, inverse


def embed_distinct(images: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``embed(images)`` computed on the distinct images only (:func:`distinct_images`), repeated to one row per image.

    Without repeats this is ``embed(images)`` itself. With repeats a repeated image gets its first occurrence's row:
    the same function of the same bytes, computed in a smaller batch (a matrix product's summation order can
    depend on the batch size, about 1e-7 on a unit-norm embedding).
    """
    firsts, inverse = distinct_images(images)
    if len(firsts) == len(images):
        return embed(images)
    distinct = embed(images[firsts])
    return distinct[torch.tensor(inverse, device=distinct.device)]


ImagesT = TypeVar("ImagesT", "torch.Tensor", "Sequence[torch.Tensor]")


class EmbeddingMemo:
    """The last ``size`` embeddings a metric computed, by the content of the uint8 images they came from.

    A subject's reference image comes back in every case of that subject, and a clip scored against several prompts
    comes back whole: their embeddings are looked up instead of recomputed (the same function on the same bytes,
    so the same numbers). Keyed by a BLAKE2b digest of the images' bytes and shape.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, images: ImagesT, embed: Callable[[ImagesT], torch.Tensor], tag: str = "") -> torch.Tensor:
        """``embed(images)``, or the embedding computed before for the same bytes and ``tag`` (the precision);
        ``images`` is a tensor or a sequence of tensors (images of different sizes)."""
        parts = [images] if isinstance(images, torch.Tensor) else list(images)
        key = tag + "".join(f":{tuple(part.shape)}:{content_digest(part.detach().cpu().contiguous().numpy())}"
                            for part in parts)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = embed(images)
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every embedding (benchmarks time the computation, not the look-up)."""
        self._items.clear()


class ImageEmbedder:
    """The image-embedding half of a metric family (CLIP, DINO): frames and reference images (uint8) ->
    L2-normalised float32 embeddings through :meth:`encode_images`, repeated frames once
    (:func:`embed_distinct`) and images seen before looked up (:class:`EmbeddingMemo`).

    The family sets ``preprocess``, ``batch_size``, ``device``, ``dtype``, ``cpu_workers`` and ``_memo`` and
    implements :meth:`encode_images`.
    """

    preprocess: Preprocess
    batch_size: int
    device: str
    dtype: str
    cpu_workers: int
    _memo: EmbeddingMemo

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(N, 3, h, w)`` images -> ``(N, D)`` embeddings (not normalised)."""
        raise NotImplementedError

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 -> ``(N, D)`` unit-norm embeddings (float32)."""
        return embed_distinct(frames, lambda distinct: self._memo(distinct, self._embed, tag=self.dtype))

    def embed_references(self, references: Sequence[Image.Image]) -> torch.Tensor:
        """Reference images (any sizes) -> ``(N, D)`` unit-norm embeddings, one batch (looked up when the same
        references come back: a subject's cases)."""
        return self._memo([image_to_tensor(image) for image in references], self._embed, tag=self.dtype)

    def _embed(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return embed_images(self.encode_images, images, self.preprocess, batch_size=self.batch_size,
                            device=self.device, dtype=self.dtype, workers=workers_for(self.device, self.cpu_workers))
