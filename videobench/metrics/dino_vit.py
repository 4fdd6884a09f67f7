"""DINO's ``VisionTransformer.forward`` (facebookresearch/dino ``vision_transformer.py``) on timm's ViT modules.

The network of :mod:`videobench.metrics.subject_consistency`, in a module of its own so that describing that family
(its options and weights) imports no torch; this module is imported when the model is built.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F

#: DINO's ``interpolate_pos_encoding`` adds this to the patch counts "to avoid floating point error".
DINO_POS_OFFSET = 0.1


def interpolate_pos_encoding(pos_embed: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """DINO's ``VisionTransformer.interpolate_pos_encoding`` for a ``height x width`` input.

    ``pos_embed`` is ``(1, 1 + N, D)`` (class token first, a square grid of ``N`` patches). Unless the input is
    square with ``N`` patches, the grid is resized by the scale factors ``(rows + 0.1) / sqrt(N)`` and
    ``(cols + 0.1) / sqrt(N)`` (bicubic, ``align_corners=False``, no antialiasing): the output has ``rows x cols``
    entries, but the sampling positions follow that scale, not the exact grid ratio.
    """
    count = pos_embed.shape[1] - 1
    rows, cols = height // patch_size, width // patch_size
    if rows * cols == count and height == width:
        return pos_embed
    side, dim = math.sqrt(count), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + DINO_POS_OFFSET) / side, (cols + DINO_POS_OFFSET) / side),
                         mode="bicubic")
    if grid.shape[-2:] != (rows, cols):
        raise ValueError(f"position embeddings of {count} patches cannot be stretched to {rows}x{cols}")
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


class DinoViT(torch.nn.Module):
    """A timm ViT run as DINO's ``VisionTransformer.forward``: patching that drops the extra pixels, DINO's
    position-embedding interpolation, the blocks, the final norm, the class token."""

    def __init__(self, vit: torch.nn.Module) -> None:
        super().__init__()
        if getattr(vit, "cls_token", None) is None or getattr(vit, "no_embed_class", False):
            raise ValueError("DinoViT needs a ViT with a class token that has its own position embedding")
        self.vit = vit
        self.patch_size = int(cast(torch.nn.Conv2d, cast(torch.nn.Module, vit.patch_embed).proj).kernel_size[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        height, width = images.shape[-2:]
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(f"a {height}x{width} frame is smaller than one {self.patch_size}px patch")
        patch_embed = cast(torch.nn.Module, vit.patch_embed)
        proj = cast(torch.nn.Conv2d, patch_embed.proj)
        tokens = proj(images).flatten(2).transpose(1, 2)  # stride = kernel: the rest is dropped
        tokens = cast(torch.nn.Module, patch_embed.norm)(tokens)
        tokens = torch.cat([cast(torch.Tensor, vit.cls_token).expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + interpolate_pos_encoding(cast(torch.Tensor, vit.pos_embed), height, width, self.patch_size)
        return cast(torch.nn.Module, vit.norm)(cast(torch.nn.Module, vit.blocks)(tokens))[:, 0]
