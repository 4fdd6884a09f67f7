"""FLOPs and peak memory of a model step without running it: no GPU, no weights, no memory.

The model is built on the meta device (no storage) and :func:`fake_module` turns its parameters and buffers into
:class:`~torch._subclasses.fake_tensor.FakeTensor` s on a real device type; under the same
:class:`~torch._subclasses.fake_tensor.FakeTensorMode` every operator then runs only its shape and dtype logic, so a
whole CogVideoX-5B step (or a training step with backward and AdamW) "runs" in seconds on a laptop. On top:

* :func:`count_flops`: :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and fused
  attention; the CPU flash-attention kernel and its backward are registered here, torch counts only the CUDA ones);
* :func:`track_peak_memory`: :class:`torch.distributed._tools.mem_tracker.MemTracker` (parameters, buffers,
  gradients, optimizer states, activations and temporaries at the peak).

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

T = TypeVar("T")
_aten = torch.ops.aten
_registered = False


def register_cpu_attention_flops() -> None:
    """Count the CPU flash-attention kernel (forward and backward) like torch counts the CUDA SDPA kernels."""
    global _registered
    if _registered:
        return

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any):
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _registered = True


def fake_module(module: torch.nn.Module, mode: FakeTensorMode, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Give every parameter and buffer of a meta-device ``module`` a FakeTensor of ``mode`` on ``device``, in place.

    Shapes, dtypes and ``requires_grad`` are kept; no storage is allocated. The module must have been built on the
    meta device (``with torch.device("meta"): ...``), LoRA layers included.
    """
    device = torch.device(device)
    for submodule in module.modules():
        for name, param in list(submodule._parameters.items()):
            if param is not None:
                fake = FakeTensor(mode, _meta(param, name), device)
                submodule._parameters[name] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None:
                submodule._buffers[name] = FakeTensor(mode, _meta(buffer, name), device)
    return module


def _meta(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.device.type != "meta":
        raise ValueError(f"fake_module needs a module built on the meta device; {name!r} is on {tensor.device}")
    return tensor.detach()


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


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` under a FLOP counter; returns its result and the total FLOPs (a multiply-add counts 2)."""
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, int(counter.get_total_flops())


def track_peak_memory(
    steps: Callable[[], Any] | Sequence[Callable[[], Any]], *tracked: torch.nn.Module | torch.optim.Optimizer
) -> dict[str, int]:
    """Run ``steps`` (one callable, or several run in order) under a memory tracker; returns the peak in bytes.

    Each step may call a tracked root module once (e.g. one micro-batch's forward and backward, then the next one
    with the optimizer step). ``tracked`` modules and optimizers are attributed to their categories from the start
    (pass every live module: tensors allocated before tracking and not passed here are not seen). The dict holds
    ``total`` and MemTracker's categories (``parameter``, ``buffer``, ``gradient``, ``activation``, ``temp``,
    ``optstate``, ``other``; gradients of modules that mix frozen and trainable parameters count as ``temp``) at
    the peak of the device with the largest peak.
    """
    tracker = _MemTracker()
    if tracked:
        tracker.track_external(*tracked)
    with tracker:
        for step in [steps] if callable(steps) else steps:
            step()
            tracker.reset_mod_stats()  # the next step may call the same root module again
    peaks = tracker.get_tracker_snapshot("peak")
    device_peaks = max(peaks.values(), key=lambda categories: categories.get("Total", 0), default={})
    breakdown = {"total": int(device_peaks.get("Total", 0))}
    for category, value in device_peaks.items():
        if category != "Total":
            breakdown[str(category).split(".")[-1].lower()] = int(value)
    return breakdown


class _MemTracker(MemTracker):
    """MemTracker for whole-model peaks: it accepts frozen parameters (MemTracker hooks every parameter's gradient,
    which a frozen one lacks) and keeps only the global peak (MemTracker also updates every active module's peak
    after every operator, a loop over all modules that makes a 5B training step take an hour)."""

    def _track_module_params_and_buffers(self, module: torch.nn.Module, install_grad_hooks: bool = True):
        install = install_grad_hooks and all(p.requires_grad for p in module.parameters())
        return super()._track_module_params_and_buffers(module, install_grad_hooks=install)

    def _update_peak_stats(self, peak_state: Any) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            total = snapshot["Total"]
            if self._peak_mem.get(device, 0) < total:
                self._peak_mem[device] = total
                self._peak_mem_snap[device] = dict(snapshot)


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
