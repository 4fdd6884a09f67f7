"""Training data for ``customvideox train``: the pair dataset as tensors, its conditions, and a latent cache.

A training sample is one reference-video pair of :class:`~customvideox.curation.pairs.PairDataset` (paper
section 5.1 and Appendix A): the target clip (``num_frames`` frames at ``height x width``, section 6.1: 25 frames,
480x720), the reference image, the caption and the entity word. The trainer needs four conditions from it:

* ``video_posterior``: the 3D causal VAE's posterior of the clip (``latent_dist.parameters``, mean and log-variance
  stacked on the channel axis); a latent is *sampled* from it at every step, as in diffusers' CogVideoX LoRA
  example (``latent_dist.sample() * scaling_factor``);
* ``reference_latents``: ``z_r`` exactly as at inference (:meth:`CustomVideoXPipeline.encode_reference`: the image
  fitted on a white canvas, one VAE latent frame, posterior mode, scaled);
* ``prompt_embeds``: the T5 embedding of the caption (:meth:`CogVideoXPipeline.encode_prompt`);
* ``entity_mask``: the entity word's T5 tokens (:func:`customvideox.pipeline.entity_token_mask`, ERAE's Eq. 8).

:class:`ConditionEncoder` computes them from pixels and text (online), and :func:`precompute_cache` writes them
once per pair into a folder (``--cache-dir``) that :class:`CachedPairDataset` reads: the T5-XXL encoder and the VAE
encoder dominate data time and memory, and with a cache the trainer never loads them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, Sampler

from mediaio.atomic import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

CACHE_INDEX = "cache.json"
#: Tensors of one cached pair (``<clip_id>.safetensors``).
CACHE_TENSORS = ("video_posterior", "reference_latents", "prompt_embeds", "entity_mask")


class TrainDataError(ValueError):
    """A pair or the cache cannot be used for training; the message names the pair or file."""


# ----------------------------------------------------------------------------------------- pixels


def resize_crop_video(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 frames -> ``(T, 3, height, width)`` float in [-1, 1].

    The clip is resized (bilinear, antialiased) to cover ``height x width`` with its aspect ratio kept, then
    centre-cropped; clips written by ``customvideox data build`` are already 480x720 and pass through unchanged.
    """
    from torchvision.transforms.v2 import functional as F

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
    src_h, src_w = video.shape[-2:]
    if (src_h, src_w) != (height, width):
        scale = max(height / src_h, width / src_w)
        size = [max(height, round(src_h * scale)), max(width, round(src_w * scale))]
        video = F.center_crop(F.resize(video, size, antialias=True), [height, width])
    return video.float() / 127.5 - 1.0


class PairTrainDataset(Dataset):
    """:class:`~customvideox.curation.pairs.PairDataset` as training tensors.

    ``dataset[i]`` is a dict with ``video`` (``(num_frames, 3, height, width)`` float in [-1, 1], the clip's first
    ``num_frames`` frames), ``reference`` (``(3, height, width)`` float in [-1, 1], fitted on a white canvas as at
    inference, :func:`customvideox.pipeline.prepare_reference_image`), ``caption``, ``entity`` and ``clip_id``.

    Raises:
        TrainDataError: naming ``pairs.parquet`` when it holds no pair; naming the clip, when it has fewer than
            ``num_frames`` frames.
    """

    def __init__(self, root: str | os.PathLike, height: int, width: int, num_frames: int) -> None:
        from customvideox.curation.pairs import PAIRS_FILE, PairDataset

        self.pairs = PairDataset(root)
        self.height, self.width, self.num_frames = height, width, num_frames
        if len(self.pairs) == 0:
            raise TrainDataError(f"{self.pairs.root / PAIRS_FILE}: no pairs in it, nothing to train on "
                                 "(see its manifests/ for why `customvideox data build` dropped every clip)")

    def check_files(self, indices: Sequence[int] | None = None) -> None:
        """Fail before training (not hours into it) when a pair's reference, mask or clip file is missing.

        Raises:
            TrainDataError: naming the missing files (the first five) and how many there are.
        """
        from customvideox.curation.pairs import PAIRS_FILE

        table = self.pairs.table
        rows = range(len(table)) if indices is None else indices
        files = [self.pairs.root / str(table.iloc[i][column]) for i in rows for column in ("reference", "mask", "clip")]
        missing = [path for path in files if not path.is_file()]
        if missing:
            shown = ", ".join(str(path) for path in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise TrainDataError(
                f"{len(missing)} file(s) listed in {self.pairs.root / PAIRS_FILE} are missing: {shown}")

    def __len__(self) -> int:
        return len(self.pairs)

    def clip_id(self, index: int) -> str:
        return str(self.pairs.table.iloc[index]["clip_id"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        from customvideox.pipeline import prepare_reference_image

        pair = self.pairs[index]
        frames = pair["frames"]
        if len(frames) < self.num_frames:
            raise TrainDataError(
                f"pair {pair['clip_id']!r} ({self.pairs.root}): clip has {len(frames)} frames, training needs "
                f"{self.num_frames}"
            )
        return {
            "clip_id": str(pair["clip_id"]),
            "video": resize_crop_video(frames[: self.num_frames], self.height, self.width),
            "reference": prepare_reference_image(pair["reference"], self.height, self.width),
            "caption": str(pair["caption"]),
            "entity": str(pair["entity"] or ""),
        }


def collate_pairs(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists (the collate function of both datasets)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else list(values)
    return batch


# ----------------------------------------------------------------------------------------- conditions


class ConditionEncoder:
    """Pixels and text -> the trainer's conditions, through the pipeline's own encoders.

    Wraps a :class:`~customvideox.pipeline.CustomVideoXPipeline` built from the frozen components, so the
    reference latent, the prompt embedding and the entity mask are computed by exactly the code that
    computes them at inference.
    """

    def __init__(self, pipeline: Any, max_sequence_length: int) -> None:
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length

    @property
    def vae(self):
        return self.pipeline.vae

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """A :class:`PairTrainDataset` batch -> ``video_posterior``, ``reference_latents``, ``prompt_embeds`` and
        ``entity_mask`` (the keys of :data:`CACHE_TENSORS`, batched)."""
        from customvideox.pipeline import entity_token_mask

        pipe, vae = self.pipeline, self.pipeline.vae
        video = batch["video"].to(device=device, dtype=vae.dtype).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        posterior = vae.encode(video).latent_dist.parameters  # (B, 2C, f, h, w)
        reference = batch["reference"].to(device=device, dtype=vae.dtype).unsqueeze(2)  # (B, 3, 1, H, W)
        reference_latents = vae.encode(reference).latent_dist.mode() * vae.config.scaling_factor
        prompt_embeds, _ = pipe.encode_prompt(
            list(batch["caption"]), do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            device=device,
        )
        mask, _ = entity_token_mask(pipe.tokenizer, list(batch["caption"]), list(batch["entity"]),
                                    self.max_sequence_length)
        return {
            "video_posterior": posterior.float(),
            "reference_latents": reference_latents.permute(0, 2, 1, 3, 4).float(),  # (B, 1, C, h, w)
            "prompt_embeds": prompt_embeds.float(),
            "entity_mask": mask.to(device),
        }


def sample_video_latents(posterior: torch.Tensor, scaling_factor: float, generator: torch.Generator) -> torch.Tensor:
    """``latent_dist.sample() * scaling_factor`` from stored posterior parameters, as ``(B, F, C, h, w)``.

    Uses diffusers' :class:`DiagonalGaussianDistribution` (mean + exp(0.5 logvar) * noise) with ``generator``.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    latents = DiagonalGaussianDistribution(posterior).sample(generator=generator) * scaling_factor
    return latents.permute(0, 2, 1, 3, 4).contiguous()


# ----------------------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class CacheSpec:
    """What a latent cache was computed for; a cache is only used for the same spec."""

    model: str
    height: int
    width: int
    num_frames: int
    max_sequence_length: int
    random_weights: bool


def _cache_file(cache_dir: Path, clip_id: str) -> Path:
    return cache_dir / f"{clip_id}.safetensors"


def read_cache_spec(cache_dir: str | os.PathLike) -> CacheSpec | None:
    path = Path(cache_dir) / CACHE_INDEX
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return CacheSpec(**data["spec"])


def check_cache_spec(cache_dir: str | os.PathLike, spec: CacheSpec) -> None:
    """Raise :class:`TrainDataError` naming the folder when its cache was built for another spec."""
    found = read_cache_spec(cache_dir)
    if found is not None and found != spec:
        diff = {k: (getattr(found, k), v) for k, v in asdict(spec).items() if getattr(found, k) != v}
        raise TrainDataError(
            f"{cache_dir}: the latent cache was built for another setting (cached, wanted): {diff}; "
            "use another --cache-dir or delete this one"
        )


def missing_cache_indices(dataset: PairTrainDataset, cache_dir: str | os.PathLike) -> list[int]:
    cache_dir = Path(cache_dir)
    return [i for i in range(len(dataset)) if not _cache_file(cache_dir, dataset.clip_id(i)).is_file()]


def precompute_cache(
    dataset: PairTrainDataset,
    encoder: ConditionEncoder,
    cache_dir: str | os.PathLike,
    spec: CacheSpec,
    indices: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> int:
    """Encode the pairs at ``indices`` (default: those not cached yet) into ``cache_dir``; returns how many.

    One ``<clip_id>.safetensors`` per pair (:data:`CACHE_TENSORS`, float32; the entity mask as uint8), written
    atomically, so an interrupted run resumes where it stopped; ``cache.json`` records the :class:`CacheSpec`.
    Several processes may fill one cache with disjoint ``indices``.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    check_cache_spec(cache_dir, spec)
    indices = missing_cache_indices(dataset, cache_dir) if indices is None else list(indices)
    for index in tqdm(indices, desc="latent cache", disable=not progress):
        sample = dataset[index]
        conditions = encoder.encode(collate_pairs([sample]), torch.device(device))
        tensors = {k: v[0].detach().cpu().contiguous() for k, v in conditions.items()}
        tensors["entity_mask"] = tensors["entity_mask"].to(torch.uint8)
        with atomic_path(_cache_file(cache_dir, sample["clip_id"])) as tmp:
            save_file(tensors, str(tmp), metadata={"clip_id": sample["clip_id"]})
    return len(indices)


def write_cache_index(cache_dir: str | os.PathLike, spec: CacheSpec, clip_ids: Sequence[str]) -> None:
    atomic_write_json(Path(cache_dir) / CACHE_INDEX, {"spec": asdict(spec), "clip_ids": list(clip_ids)})


class CachedPairDataset(Dataset):
    """The cached conditions of a pair dataset: ``dataset[i]`` has :data:`CACHE_TENSORS` and ``clip_id``.

    Raises:
        TrainDataError: naming the folder, when the cache is absent, built for another spec or incomplete.
    """

    def __init__(self, cache_dir: str | os.PathLike, spec: CacheSpec, clip_ids: Sequence[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        found = read_cache_spec(self.cache_dir)
        if found is None:
            raise TrainDataError(f"{self.cache_dir}: no latent cache ({CACHE_INDEX} is missing)")
        check_cache_spec(self.cache_dir, spec)
        self.clip_ids = list(clip_ids) if clip_ids is not None else json.loads(
            (self.cache_dir / CACHE_INDEX).read_text())["clip_ids"]
        missing = [c for c in self.clip_ids if not _cache_file(self.cache_dir, c).is_file()]
        if missing:
            raise TrainDataError(f"{self.cache_dir}: {len(missing)} pair(s) not cached, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip_id = self.clip_ids[index]
        file = _cache_file(self.cache_dir, clip_id)
        try:
            tensors = load_file(str(file))
        except Exception as error:  # a truncated or foreign file
            raise TrainDataError(f"{file}: unreadable cache entry ({type(error).__name__}: {error})") from error
        absent = [k for k in CACHE_TENSORS if k not in tensors]
        if absent:
            raise TrainDataError(f"{file}: cache entry lacks {absent}")
        tensors["entity_mask"] = tensors["entity_mask"].bool()
        return {"clip_id": clip_id, **{k: tensors[k] for k in CACHE_TENSORS}}


# ----------------------------------------------------------------------------------------- sampling


class PairStreamSampler(Sampler[int]):
    """An endless, resumable, rank-aware stream of pair indices.

    The stream is a sequence of epochs; epoch ``e`` is a permutation of the dataset drawn from
    ``seed + e`` (or the identity without ``shuffle``), padded by wrapping to a multiple of ``world_size``
    and dealt round-robin to the ranks, like :class:`torch.utils.data.DistributedSampler`. Rank ``r``'s
    ``p``-th sample is therefore a pure function of ``(seed, r, p)``: resuming at position ``start`` gives
    exactly the samples an uninterrupted run would have seen.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True) -> None:
        if num_samples <= 0:
            raise TrainDataError("the pair dataset is empty: nothing to train on")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.start, self.shuffle = seed, start, shuffle
        self.per_rank = -(-num_samples // world_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
            order = order.tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order = (order * (-(-total // len(order))))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_rank)
            indices = self.epoch_indices(epoch)
            for index in indices[offset:]:
                yield index
            position = (epoch + 1) * self.per_rank
