"""VideoBooth's video UNet architecture (upstream ``models/unet.py`` on SD 1.4's ``unet/config.json``), torch-free:
describing the method imports only this module, building it :mod:`baselines.videobooth_model`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from videobench.weights import WeightsLoadError

CROSS_ATTN_DOWN = "CrossAttnDownBlock3D"
DOWN = "DownBlock3D"
CROSS_ATTN_UP = "CrossAttnUpBlock3D"
UP = "UpBlock3D"


@dataclass(frozen=True)
class UNetConfig:
    """The video UNet's architecture (defaults: SD 1.4's ``unet/config.json`` as upstream inflates it).

    ``attention_heads`` is SD 1.x's ``attention_head_dim`` (8), which diffusers 0.11 passed on as the number of
    heads; ``watermark_block_out_channels`` is hard-coded upstream ([320, 640, 640]).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, DOWN)
    up_block_types: tuple[str, ...] = (UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP)
    layers_per_block: int = 2
    attention_heads: int | tuple[int, ...] = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    watermark_block_out_channels: tuple[int, ...] = (320, 640, 640)

    def heads(self) -> tuple[int, ...]:
        heads = self.attention_heads
        return tuple(heads) if isinstance(heads, (tuple, list)) else (heads,) * len(self.block_out_channels)

    @classmethod
    def from_sd_unet_config(cls, config: Mapping[str, Any], source: str = "unet/config.json") -> UNetConfig:
        """The video UNet for a diffusers ``UNet2DConditionModel`` config, as ``from_pretrained_2d`` builds it.

        Upstream keeps the 2D config and swaps the block types for their 3D versions; options that its 3D
        blocks do not implement (linear projections, class embeddings, ...) are refused here.
        """
        unsupported = {
            "use_linear_projection": False, "class_embed_type": None, "num_class_embeds": None,
            "dual_cross_attention": False, "only_cross_attention": False, "upcast_attention": False,
            "resnet_time_scale_shift": "default", "center_input_sample": False, "act_fn": "silu",
        }
        bad = [f"{key}={config[key]!r}" for key, expected in unsupported.items()
               if key in config and config[key] != expected]
        if bad:
            raise WeightsLoadError(f"{source}: VideoBooth's 3D UNet does not implement {', '.join(bad)}")
        channels = tuple(config.get("block_out_channels", cls.block_out_channels))
        n = len(channels)
        return cls(
            in_channels=int(config.get("in_channels", 4)), out_channels=int(config.get("out_channels", 4)),
            block_out_channels=channels,
            down_block_types=(CROSS_ATTN_DOWN,) * (n - 1) + (DOWN,),
            up_block_types=(UP,) + (CROSS_ATTN_UP,) * (n - 1),
            layers_per_block=int(config.get("layers_per_block", 2)),
            attention_heads=_as_int_or_tuple(config.get("attention_head_dim", 8)),
            cross_attention_dim=int(config.get("cross_attention_dim", 768)),
            norm_num_groups=int(config.get("norm_num_groups", 32)),
            norm_eps=float(config.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
            freq_shift=int(config.get("freq_shift", 0)),
            downsample_padding=int(config.get("downsample_padding", 1)),
            mid_block_scale_factor=float(config.get("mid_block_scale_factor", 1.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


def _as_int_or_tuple(value: Any) -> int | tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)
