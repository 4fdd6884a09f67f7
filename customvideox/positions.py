"""Rotary positions of video and reference tokens (paper Eq. 5: ``p_r = p_v + delta``).

CogVideoX-5B encodes token positions with a 3D RoPE (:func:`diffusers.models.embeddings.get_3d_rotary_pos_embed`):
the head dimension is split into a temporal part (``d/4``) and two spatial parts (``3d/8`` each) whose
angles are ``position * theta^(-2i/d_part)``. The positions themselves come from a grid that the
CogVideoX pipeline builds (``_prepare_rotary_positional_embeddings``): frame indices ``0..F-1`` and a
``linspace`` over the crop region of the latent grid inside the base (training) grid.

The reference image is one latent frame with the video's spatial grid. Its tokens get the positions of
the first video frame shifted by ``delta = (dt, dh, dw)`` (:attr:`ReferenceConfig.rope_shift`), computed
here with the same frequency split, so a shift of zero reproduces frame 0 of the video table exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed, get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

RotaryEmbedding = tuple[torch.Tensor, torch.Tensor]


_DEFAULTS = {"patch_size_t": None}


def _cfg(config: Any, name: str) -> Any:
    """Read a transformer config field from a diffusers config, a dict of constructor kwargs, or an object."""
    if isinstance(config, dict):
        return config[name] if name in config or name not in _DEFAULTS else _DEFAULTS[name]
    return getattr(config, name, _DEFAULTS.get(name))


def _token_grid(config: Any, height: int, width: int) -> tuple[int, int]:
    p = _cfg(config, "patch_size")
    return height // p, width // p


def _check_rotary_config(config: Any) -> None:
    if _cfg(config, "patch_size_t") is not None:
        raise NotImplementedError(
            "CustomVideoX reference positions support CogVideoX 1.0 checkpoints (patch_size_t=None, e.g. "
            "CogVideoX-5B); CogVideoX 1.5 patches frames in pairs and a single reference frame cannot be patched"
        )


def video_position_grids(
    config: Any, num_frames: int, height: int, width: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 1D temporal, height and width positions of the video's RoPE grid.

    Args:
        config: the transformer config (``patch_size``, ``sample_height``, ``sample_width``).
        num_frames: number of latent frames.
        height, width: latent height and width (before patching).

    Returns:
        ``(pos_t, pos_h, pos_w)`` float32 tensors of lengths ``num_frames``, ``height // p``, ``width // p``:
        exactly the grids :func:`get_3d_rotary_pos_embed` builds for the CogVideoX pipeline.
    """
    _check_rotary_config(config)
    p = _cfg(config, "patch_size")
    grid_h, grid_w = _token_grid(config, height, width)
    base_w, base_h = _cfg(config, "sample_width") // p, _cfg(config, "sample_height") // p
    (top, left), (bottom, right) = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
    kw = dict(device=device, dtype=torch.float32)
    pos_h = torch.linspace(top, bottom * (grid_h - 1) / grid_h, grid_h, **kw)
    pos_w = torch.linspace(left, right * (grid_w - 1) / grid_w, grid_w, **kw)
    pos_t = torch.linspace(0, num_frames * (num_frames - 1) / num_frames, num_frames, **kw)
    return pos_t, pos_h, pos_w


def rotary_from_positions(
    head_dim: int, pos_t: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor, theta: float = 10000.0
) -> RotaryEmbedding:
    """3D RoPE (cos, sin) tables for the grid ``pos_t x pos_h x pos_w`` (row order t, h, w).

    Uses the frequency split of :func:`get_3d_rotary_pos_embed` (temporal ``d/4``, height and width ``3d/8``).
    Returns two ``(len(pos_t) * len(pos_h) * len(pos_w), head_dim)`` float32 tensors.
    """
    dim_t, dim_h, dim_w = head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3
    (t_cos, t_sin), (h_cos, h_sin), (w_cos, w_sin) = (
        get_1d_rotary_pos_embed(dim, pos.float(), theta=theta, use_real=True)
        for dim, pos in ((dim_t, pos_t), (dim_h, pos_h), (dim_w, pos_w))
    )
    nt, nh, nw = len(pos_t), len(pos_h), len(pos_w)

    def combine(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t = t[:, None, None, :].expand(nt, nh, nw, -1)
        h = h[None, :, None, :].expand(nt, nh, nw, -1)
        w = w[None, None, :, :].expand(nt, nh, nw, -1)
        return torch.cat([t, h, w], dim=-1).reshape(nt * nh * nw, -1)

    return combine(t_cos, h_cos, w_cos), combine(t_sin, h_sin, w_sin)


def video_rotary_pos_embed(
    config: Any, num_frames: int, height: int, width: int, device: torch.device | None = None
) -> RotaryEmbedding:
    """The video tokens' RoPE, exactly as ``CogVideoXPipeline._prepare_rotary_positional_embeddings``.

    ``height`` and ``width`` are latent sizes (the pipeline's pixel size divided by the VAE's 8).
    """
    _check_rotary_config(config)
    p = _cfg(config, "patch_size")
    grid_h, grid_w = _token_grid(config, height, width)
    crops = get_resize_crop_region_for_grid(
        (grid_h, grid_w), _cfg(config, "sample_width") // p, _cfg(config, "sample_height") // p
    )
    return get_3d_rotary_pos_embed(
        embed_dim=_cfg(config, "attention_head_dim"),
        crops_coords=crops,
        grid_size=(grid_h, grid_w),
        temporal_size=num_frames,
        device=device,
    )


def reference_rotary_pos_embed(
    config: Any,
    height: int,
    width: int,
    shift: Sequence[float] = (-1.0, 0.0, 0.0),
    device: torch.device | None = None,
) -> RotaryEmbedding:
    """RoPE of the reference tokens: first-frame video positions shifted by ``delta`` (Eq. 5).

    ``p_r(h, w) = (t_0 + dt, pos_h[h] + dh, pos_w[w] + dw)`` with ``t_0, pos_h, pos_w`` from
    :func:`video_position_grids`. Positions may be negative or fractional (RoPE is defined for any real
    position). Returns ``(cos, sin)`` of shape ``(height // p * width // p, head_dim)``.
    """
    dt, dh, dw = (float(x) for x in shift)
    pos_t, pos_h, pos_w = video_position_grids(config, 1, height, width, device=device)
    return rotary_from_positions(_cfg(config, "attention_head_dim"), pos_t + dt, pos_h + dh, pos_w + dw)
