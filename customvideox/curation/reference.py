"""Stage 3, reference extraction (Appendix A, last stage; section 5.1): Grounded-SAM on the first frame.

For a clip kept by stages 1-2 with main entity ``e``:

1. Grounding DINO detects ``e`` (text prompt ``"e."``) in frame 0; the highest-scoring box above
   ``min_box_score`` is the subject (``entity_not_found`` otherwise; ``subject_too_small`` /
   ``subject_too_large`` when its area is outside ``[min_box_area, max_box_area]`` of the frame);
2. SAM segments the subject inside that box (``segmentation_failed`` when the mask covers less than
   ``min_mask_fill`` of the box);
3. the reference image is frame 0 with everything outside the mask painted white, cropped to the mask's bounding
   box plus a ``margin``;
4. the target clip is the frames after it: ``ClipWindow`` (25 frames at an interval of 3, section 6.1), resized
   to cover ``height x width`` (480x720) and centre-cropped, written as H.264 mp4 at ``fps / interval``.

Detector and segmenter are small interfaces, ``detect(image, text) -> (boxes, scores)`` and
``segment(image, box) -> mask``; :class:`GroundingDinoDetector` and :class:`SamSegmenter` are the paper's models
through transformers, loaded from folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from customvideox.curation.manifest import Decision
from customvideox.curation.models import GROUNDING_DINO, SAM, check_models
from customvideox.curation.quality import ClipWindow, probe_video, read_frames
from mediaio.atomic import atomic_path
from mediaio.video import VideoError, write_video

REFERENCE_FILE = "reference.png"
MASK_FILE = "mask.png"
CLIP_FILE = "clip.mp4"


@runtime_checkable
class Detector(Protocol):
    """Open-set detection: boxes ``(K, 4)`` as pixel ``x0, y0, x1, y1`` and scores ``(K,)`` for ``text``."""

    random_weights: bool

    def detect(self, image: Image.Image, text: str) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Segmenter(Protocol):
    """Box-prompted segmentation: a boolean ``(H, W)`` mask of the object inside ``box`` (x0, y0, x1, y1)."""

    random_weights: bool

    def segment(self, image: Image.Image, box: np.ndarray) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------------- transformers


class GroundingDinoDetector:
    """Grounding DINO through transformers (``GroundingDinoForObjectDetection`` + ``AutoProcessor``)."""

    def __init__(self, model: Any, processor: Any, box_threshold: float = 0.35, text_threshold: float = 0.25,
                 device: str = "cpu", random_weights: bool = False) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.device = device
        self.random_weights = random_weights

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str = "cpu", **kwargs: Any) -> GroundingDinoDetector:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        return cls(GroundingDinoForObjectDetection.from_pretrained(str(path)), AutoProcessor.from_pretrained(str(path)),
                   device=device, **kwargs)

    @staticmethod
    def prompt(text: str) -> str:
        """Grounding DINO's text convention: lower case, ending with a period."""
        text = " ".join(text.lower().split()).rstrip(".")
        return f"{text}."

    @torch.no_grad()
    def detect(self, image: Image.Image, text: str) -> tuple[np.ndarray, np.ndarray]:
        inputs = self.processor(images=image, text=self.prompt(text), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(image.height, image.width)])[0]
        return result["boxes"].float().cpu().numpy().reshape(-1, 4), result["scores"].float().cpu().numpy()


class SamSegmenter:
    """SAM through transformers (``SamModel`` + ``SamProcessor``), box prompt, the mask with the best IoU score."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu", random_weights: bool = False) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device
        self.random_weights = random_weights

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str = "cpu", **kwargs: Any) -> SamSegmenter:
        from transformers import SamModel, SamProcessor

        return cls(SamModel.from_pretrained(str(path)), SamProcessor.from_pretrained(str(path)), device=device,
                   **kwargs)

    @torch.no_grad()
    def segment(self, image: Image.Image, box: np.ndarray) -> np.ndarray:
        inputs = self.processor(images=image, input_boxes=[[[float(v) for v in box]]], return_tensors="pt")
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()}, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]
        best = int(outputs.iou_scores[0, 0].argmax())
        return masks[0, best].numpy().astype(bool)


# ------------------------------------------------------------------------------------------------- image helpers


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(T, H, W, 3)`` uint8 frames to cover ``height x width`` (aspect kept), then centre-crop."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    scale = max(height / x.shape[-2], width / x.shape[-1])
    size = [max(height, round(x.shape[-2] * scale)), max(width, round(x.shape[-1] * scale))]
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[..., top:top + height, left:left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box ``(x0, y0, x1, y1)`` (exclusive ends) of a boolean mask; None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def masked_crop(image: np.ndarray, mask: np.ndarray, margin: float = 0.05,
                background: int = 255) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """White out everything outside ``mask`` and crop to the mask's box grown by ``margin`` of its size.

    Returns the RGB crop, the crop of the mask and the crop box ``(x0, y0, x1, y1)`` in frame pixels.
    """
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("empty mask")
    x0, y0, x1, y1 = box
    pad_x, pad_y = round((x1 - x0) * margin), round((y1 - y0) * margin)
    h, w = mask.shape
    x0, y0, x1, y1 = max(0, x0 - pad_x), max(0, y0 - pad_y), min(w, x1 + pad_x), min(h, y1 + pad_y)
    composite = np.where(mask[..., None], image, np.uint8(background)).astype(np.uint8)
    return composite[y0:y1, x0:x1], mask[y0:y1, x0:x1], (x0, y0, x1, y1)


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ------------------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class ReferenceConfig:
    height: int = 480
    width: int = 720
    min_box_score: float = 0.35
    min_box_area: float = 0.01  # of the frame
    max_box_area: float = 0.95
    min_mask_fill: float = 0.10  # mask pixels / box pixels
    margin: float = 0.05
    reference_frame: int = 0
    decode_short_side: int = 1080  # frames are decoded at most this large (1080p sources at full size)
    crf: int = 17


class ReferenceExtractor:
    """Decides one clip and writes its pair: ``assess(video, entity, pair_dir) -> Decision``."""

    stage = "reference"

    def __init__(self, detector: Detector, segmenter: Segmenter, config: ReferenceConfig = ReferenceConfig(),
                 window: ClipWindow = ClipWindow()) -> None:
        if window.start <= config.reference_frame:
            raise ValueError(f"the target clip must start after the reference frame ({config.reference_frame}), "
                             f"got start={window.start}")
        self.detector = detector
        self.segmenter = segmenter
        self.config = config
        self.window = window

    @property
    def random_weights(self) -> bool:
        return bool(getattr(self.detector, "random_weights", False) or getattr(self.segmenter, "random_weights", False))

    def assess(self, path: str | os.PathLike, entity: str, pair_dir: str | os.PathLike) -> Decision:
        cfg, pair_dir = self.config, Path(pair_dir)
        try:
            info = probe_video(path)
            frames = read_frames(path, [cfg.reference_frame, *self.window.indices()], short_side=cfg.decode_short_side)
        except VideoError as error:
            return Decision.drop("unreadable", str(error))
        first, clip = frames[0], frames[1:]
        image = Image.fromarray(first)
        boxes, scores = self.detector.detect(image, entity)
        boxes, scores = np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(scores, dtype=np.float32)
        if len(scores) == 0 or scores.max() < cfg.min_box_score:
            best = float(scores.max()) if len(scores) else 0.0
            return Decision.drop("entity_not_found", f"no box for {entity!r} scores >= {cfg.min_box_score} "
                                 f"(best {best:.3f})", box_score=best)
        index = int(scores.argmax())
        box, score = boxes[index], float(scores[index])
        area = float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]) / (first.shape[0] * first.shape[1]))
        values: dict[str, Any] = {"box_score": score, "box": [float(v) for v in box], "box_area": area}
        if area < cfg.min_box_area:
            return Decision.drop("subject_too_small", f"box covers {area:.4f} of the frame < {cfg.min_box_area}",
                                 **values)
        if area > cfg.max_box_area:
            return Decision.drop("subject_too_large", f"box covers {area:.4f} of the frame > {cfg.max_box_area}",
                                 **values)
        mask = np.asarray(self.segmenter.segment(image, box), dtype=bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        box_pixels = max(1, (x1 - x0) * (y1 - y0))
        fill = float(mask[max(0, y0):y1, max(0, x0):x1].sum() / box_pixels)
        values["mask_fill"] = fill
        if mask.shape != first.shape[:2] or fill < cfg.min_mask_fill:
            return Decision.drop("segmentation_failed", f"the mask fills {fill:.3f} of the box < {cfg.min_mask_fill}",
                                 **values)
        crop, crop_mask, crop_box = masked_crop(first, mask, cfg.margin)
        target = resize_center_crop(clip, cfg.height, cfg.width)
        fps = info.fps / self.window.interval
        save_png(Image.fromarray(crop), pair_dir / REFERENCE_FILE)
        save_png(Image.fromarray(crop_mask.astype(np.uint8) * 255), pair_dir / MASK_FILE)
        write_video(pair_dir / CLIP_FILE, target, fps=max(1, round(fps)), crf=cfg.crf)
        values.update(crop_box=list(crop_box), reference_height=int(crop.shape[0]), reference_width=int(crop.shape[1]),
                      clip_frames=int(len(target)), clip_height=cfg.height, clip_width=cfg.width,
                      clip_fps=float(max(1, round(fps))))
        return Decision.keep(**values)


def build_grounded_sam(weights_dir: str | os.PathLike | None = None, *, detector_path: str | None = None,
                       segmenter_path: str | None = None, device: str = "cpu", box_threshold: float = 0.35,
                       text_threshold: float = 0.25) -> tuple[GroundingDinoDetector, SamSegmenter]:
    """Grounding DINO and SAM from their folders (both checked before either loads).

    Raises:
        videobench.weights.MissingWeightsError: naming each missing folder and where it goes.
    """
    found = check_models([(GROUNDING_DINO, detector_path), (SAM, segmenter_path)], weights_dir)
    detector = GroundingDinoDetector.from_path(found["detector"], device=device, box_threshold=box_threshold,
                                               text_threshold=text_threshold)
    return detector, SamSegmenter.from_path(found["segmenter"], device=device)


def build_reference_extractor(weights_dir: str | os.PathLike | None = None, *, detector_path: str | None = None,
                              segmenter_path: str | None = None, config: ReferenceConfig = ReferenceConfig(),
                              window: ClipWindow = ClipWindow(), device: str = "cpu") -> ReferenceExtractor:
    """Stage 3 with Grounding DINO and SAM from their folders."""
    detector, segmenter = build_grounded_sam(weights_dir, detector_path=detector_path, segmenter_path=segmenter_path,
                                             device=device, box_threshold=min(config.min_box_score, 0.35))
    return ReferenceExtractor(detector, segmenter, config, window)
