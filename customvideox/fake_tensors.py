"""FLOPs and peak memory of a CustomVideoX step without running it: no GPU, no weights, no memory.

The model-agnostic machinery lives in :mod:`costmodel.counting`: the model is built on the meta
device, :func:`fake_module` turns its parameters and buffers into FakeTensors, and every operator then runs only
its shape and dtype logic, so a whole CogVideoX-5B step (or a training step with backward and AdamW) "runs" in
seconds on a laptop, under :func:`~costmodel.counting.count_flops` (FlopCounterMode) and
:func:`~costmodel.counting.track_peak_memory` (MemTracker).

The one data-dependent decision of a CustomVideoX forward (which prompt tokens are the entity,
:func:`customvideox.attention.entity_token_indices`) is replaced by :func:`fixed_entity_tokens`.

What the model cannot see, so read its numbers as estimates: kernel efficiency (a FLOP in the reference's short
attention, in an elementwise merge or in ERAE's map costs more time than one in a large matmul: FLOP ratios are a
lower bound on time ratios), CUDA workspaces and the caching allocator's slack, and device-specific paths (the shapes
run on the CPU's kernels: e.g. the attention merge runs eagerly, with float32 temporaries that the compiled CUDA merge
does not allocate, so inference peaks are slight overestimates).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from costmodel.counting import fake_module
from customvideox.positions import video_rotary_pos_embed


@contextlib.contextmanager
def fixed_entity_tokens(num_tokens: int = 2, first: int = 3) -> Iterator[None]:
    """Every sample's entity word is prompt tokens ``first .. first + num_tokens - 1`` (ERAE's shape, Eq. 8).

    Replaces :func:`customvideox.attention.entity_token_indices` inside :mod:`customvideox.transformer`, whose
    answer depends on the mask's values (which FakeTensors do not have).
    """

    def indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = mask.shape[0]
        index = torch.arange(first, first + num_tokens, device=mask.device).expand(batch, num_tokens).contiguous()
        return index, torch.ones(batch, num_tokens, dtype=torch.bool, device=mask.device)

    with mock.patch("customvideox.transformer.entity_token_indices", indices):
        yield


def fake_transformer(
    transformer_config: dict[str, Any],
    reference_config: Any,
    mode: FakeTensorMode,
    base_dtype: torch.dtype = torch.bfloat16,
    lora_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """A :class:`~customvideox.transformer.CustomVideoXTransformer3DModel` with the reference LoRA, as FakeTensors.

    The base weights are ``base_dtype`` and frozen. ``lora_dtype=None`` keeps the LoRA in ``base_dtype`` and frozen
    (inference); a dtype makes the LoRA trainable in that dtype (training: float32 under bf16 autocast).
    CustomVideoX's attention processors are installed, so a call without a reference computes vanilla CogVideoX.
    """
    from .lora import lora_parameters, mark_only_reference_lora_trainable
    from .transformer import CustomVideoXTransformer3DModel

    with torch.device("meta"):
        model = CustomVideoXTransformer3DModel(**transformer_config)
        model.add_reference_lora(reference_config)
    model.requires_grad_(False)
    for parameter in model.parameters():
        parameter.data = parameter.data.to(base_dtype)
    if lora_dtype is not None:
        mark_only_reference_lora_trainable(model)
        for _, parameter in lora_parameters(model):
            parameter.data = parameter.data.to(lora_dtype)
    return fake_module(model, mode, device).eval()


def cfg_step_inputs(model: torch.nn.Module, shape: tuple[int, int, int, int], device: torch.device,
                dtype: torch.dtype) -> dict[str, Any]:
    """The inputs of one CFG step (batch 2) at latent ``shape`` = (frames, height, width, text tokens), seeded."""
    frames, height, width, text_len = shape
    g = torch.Generator(device).manual_seed(1)
    channels, text_dim = model.config.in_channels, model.config.text_embed_dim
    entity = torch.zeros(2, text_len, dtype=torch.bool, device=device)
    entity[:, 3:5] = True  # a two-token entity word in both CFG halves
    # ... and its indices, gathered once per video as the pipeline does (no host sync or graph break per step)
    entity_tokens = (torch.arange(3, 5, device=device).expand(2, 2), torch.ones(2, 2, dtype=torch.bool, device=device))
    return dict(
        latents=torch.randn(2, frames, channels, height, width, generator=g, device=device, dtype=dtype),
        prompt_embeds=torch.randn(2, text_len, text_dim, generator=g, device=device, dtype=dtype),
        timestep=torch.full((2,), 500, device=device, dtype=torch.long),
        rotary=video_rotary_pos_embed(model.config, frames, height, width, device=device),
        reference=torch.randn(1, 1, channels, height, width, generator=g, device=device, dtype=dtype),
        entity=entity,
        entity_tokens=entity_tokens,
        pixels=(height * 8, width * 8),
    )
