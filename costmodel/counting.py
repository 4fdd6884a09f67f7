"""FLOPs and peak memory of a model call without running it: no GPU, no weights, no memory. Model-agnostic.

A model is built on the meta device (no storage) and :func:`fake_module` turns its parameters and buffers into
:class:`~torch._subclasses.fake_tensor.FakeTensor` s on a real device type; under the same
:class:`~torch._subclasses.fake_tensor.FakeTensorMode` every operator then runs only its shape and dtype logic, so a
5B-parameter denoising step (or a training step with backward and AdamW) "runs" in seconds on a laptop. On top:

* :func:`count_flops`: :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and fused
  attention; the CPU flash-attention kernel and its backward are registered here, torch counts only the CUDA ones);
* :func:`track_peak_memory`: :class:`torch.distributed._tools.mem_tracker.MemTracker` (parameters, buffers,
  gradients, optimizer states, activations and temporaries at the peak);
* :func:`meta_module` builds any ``nn.Module`` factory on the meta device in a dtype and fakes it;
  :class:`Piece` / :func:`measure_pieces` add up the calls one generation makes (e.g. two text-encoder calls,
  50 denoiser steps, one VAE decode) into FLOPs per generation and the peak of the largest call with every
  resident model's weights counted.

What the model cannot see, so read its numbers as estimates: kernel efficiency (a FLOP in a short attention, an
elementwise op or a normalisation costs more time than one in a large matmul: FLOP ratios are a lower bound on
time ratios; elementwise ops are not counted at all), CUDA workspaces and the caching allocator's slack, and
device-specific paths (the shapes run on the CPU's kernels: e.g. SDPA dispatches to the CPU flash kernel, which, like
CUDA's flash and memory-efficient kernels, never holds the attention matrix).

Used by :mod:`customvideox.fake_tensors` (the CustomVideoX transformer) and the per-method cost models of the comparison
baselines (:mod:`costmodel.configs`); depends on torch only.
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

T = TypeVar("T")
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)
GIB = 2**30
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


def fake_module(module: ModuleT, mode: FakeTensorMode, device: str | torch.device = "cpu") -> ModuleT:
    """Give every parameter and buffer of a meta-device ``module`` a FakeTensor of ``mode`` on ``device``, in place.

    Shapes, dtypes and ``requires_grad`` are kept; no storage is allocated. The module must have been built on the
    meta device (``with torch.device("meta"): ...``), LoRA layers included.
    """
    device = torch.device(device)
    for submodule in module.modules():
        for name, param in list(submodule._parameters.items()):
            if param is not None and not isinstance(param, FakeTensor):
                fake = FakeTensor(mode, _meta(param, name), device)
                submodule._parameters[name] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None and not isinstance(buffer, FakeTensor):
                submodule._buffers[name] = FakeTensor(mode, _meta(buffer, name), device)
    return module


def _meta(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.device.type != "meta":
        raise ValueError(f"fake_module needs a module built on the meta device; {name!r} is on {tensor.device}")
    return tensor.detach()


def meta_module(factory: Callable[[], ModuleT], mode: FakeTensorMode, dtype: torch.dtype | None = None,
                keep_float32: Iterable[str] = ()) -> ModuleT:
    """``factory()`` built on the meta device, frozen, in eval mode, cast to ``dtype`` and faked under ``mode``.

    ``factory`` returns an ``nn.Module`` (built with whatever code the real model uses). Parameters and buffers
    whose name contains one of ``keep_float32`` stay float32 (as ``from_pretrained(torch_dtype=...)`` keeps a
    model's ``_keep_in_fp32_modules``); integer buffers keep their dtype.
    """
    with torch.device("meta"):
        module = factory()
    return fake_module(prepare_module(module, dtype, keep_float32), mode)


def prepare_module(module: ModuleT, dtype: torch.dtype | None = None, keep_float32: Iterable[str] = ()) -> ModuleT:
    """``module`` frozen, in eval mode, its floating-point tensors cast to ``dtype`` (except names containing one
    of ``keep_float32``), in place."""
    module.requires_grad_(False).eval()
    if dtype is not None:
        keep = tuple(keep_float32)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and not any(part in name for part in keep):
                tensor.data = tensor.data.to(dtype)
    return module


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` under a FLOP counter; returns its result and the total FLOPs (a multiply-add counts 2)."""
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, int(counter.get_total_flops())


class _Call(torch.nn.Module):
    """A throwaway root module around one inference step: MemTracker refuses a root module (or a method such as a
    VAE's ``decode`` that calls its submodules at the top level) running twice in one tracking pass, and a fresh
    root per step makes every repeated call a nested one, which it accepts. (Not for steps with a backward pass:
    MemTracker's module tracker loses the hierarchy when a backward runs inside a forward.)"""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self) -> Any:
        return self.fn()


def track_peak_memory(
    steps: Callable[[], Any] | Sequence[Callable[[], Any]],
    *tracked: torch.nn.Module | torch.optim.Optimizer | torch.Tensor,
) -> dict[str, int]:
    """Run ``steps`` (one callable, or several run in order) under a memory tracker; returns the peak in bytes.

    Each step may call a tracked root module once (e.g. one micro-batch's forward and backward, then the next one
    with the optimizer step). ``tracked`` modules and optimizers are attributed to their categories from the start
    (pass every live module: tensors allocated before tracking and not passed here are not seen). The dict holds
    ``total`` and MemTracker's categories (``parameter``, ``buffer``, ``gradient``, ``activation``, ``temp``,
    ``optstate``, ``other``; gradients of modules that mix frozen and trainable parameters count as ``temp``) at
    the peak of the device with the largest peak. Under ``torch.no_grad()`` (inference) each step runs inside a
    fresh root module, so a step may call the same submodule several times at its top level (a VAE decoding frame
    batch after frame batch).
    """
    wrap = not torch.is_grad_enabled()
    tracker = _MemTracker()
    if tracked:
        tracker.track_external(*tracked)
    with tracker:
        for step in [steps] if callable(steps) else steps:
            _Call(step)() if wrap else step()
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


# --- a generation as a sum of calls ---------------------------------------------------------------------------------
@dataclass
class Piece:
    """One kind of call a generation makes: ``run()`` does it once (under the pieces' FakeTensorMode), ``calls``
    times per generation (e.g. a denoiser step: ``calls`` = the sampler's model evaluations).

    ``note`` says what the call is (batch, shape, dtype) for the report. ``tracked()`` returns tensors made by an
    earlier piece that stay alive during this one (e.g. a cache built once and read at every step): they count
    toward its peak.
    """

    name: str
    run: Callable[[], Any]
    calls: float = 1
    note: str = ""
    tracked: Callable[[], Iterable[torch.Tensor]] | None = None


@dataclass
class PieceCost:
    """A run :class:`Piece`: FLOPs of one call, the peak while it runs (resident weights included), and, when it ran
    for real (:func:`run_for_real`), the seconds of one call."""

    name: str
    calls: float
    flops_per_call: int
    peak_bytes: int
    note: str = ""
    seconds_per_call: float | None = None

    @property
    def flops(self) -> float:
        return self.calls * self.flops_per_call

    def to_dict(self) -> dict[str, Any]:
        timed = {} if self.seconds_per_call is None else {
            "seconds_per_call": self.seconds_per_call, "seconds": self.calls * self.seconds_per_call}
        return {"name": self.name, "calls": self.calls, "tflops_per_call": self.flops_per_call / 1e12,
                "tflops": self.flops / 1e12, "peak_gib": self.peak_bytes / GIB, "note": self.note, **timed}


@dataclass
class PiecesCost:
    """The sum of a generation's pieces: total FLOPs, and the largest peak of any one call."""

    pieces: list[PieceCost] = field(default_factory=list)
    resident_bytes: int = 0
    #: The device the pieces ran on for real (None: FakeTensors).
    device: str | None = None

    @property
    def flops(self) -> float:
        return sum(piece.flops for piece in self.pieces)

    @property
    def seconds(self) -> float | None:
        """Seconds per generation of the calls timed for real (None on FakeTensors)."""
        if self.device is None:
            return None
        return sum(piece.calls * (piece.seconds_per_call or 0.0) for piece in self.pieces)

    @property
    def peak_bytes(self) -> int:
        return max([self.resident_bytes, *(piece.peak_bytes for piece in self.pieces)])


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules`` (each tensor once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def measure_pieces(pieces: Sequence[Piece], mode: FakeTensorMode, resident: Sequence[torch.nn.Module],
                   memory: bool = True) -> PiecesCost:
    """FLOPs of one call of each piece (x its ``calls``) and the peak while it runs with ``resident`` tracked.

    ``resident`` are the models held in memory while the pieces run (a pipeline on the GPU keeps every component
    resident), so each piece's peak is the weights of all of them plus that call's activations and temporaries.
    ``memory=False`` skips the (slower) memory tracking: peaks are then the resident weights only.
    """
    weights = module_bytes(*resident)
    result = PiecesCost(resident_bytes=weights)
    with mode, torch.no_grad():
        for piece in pieces:
            if not memory:
                _, flops = count_flops(piece.run)
                result.pieces.append(PieceCost(piece.name, piece.calls, flops, weights, piece.note))
                continue
            counted: dict[str, int] = {}  # one pass: the FLOP counter runs inside the memory tracker

            def run(piece: Piece = piece, counted: dict[str, int] = counted) -> None:
                counted["flops"] = count_flops(piece.run)[1]

            extra = list(piece.tracked()) if piece.tracked is not None else []
            peak = track_peak_memory(run, *resident, *extra)["total"]
            result.pieces.append(PieceCost(piece.name, piece.calls, counted["flops"], max(peak, weights), piece.note))
    return result


@dataclass(frozen=True)
class Execution:
    """Run a :class:`FakeStage` for real on ``device``: components random-initialised there, each call timed, FLOPs
    counted on its first run, peaks from the CUDA allocator. A call made more than twice per generation (e.g. a
    denoiser step) runs ``max(warmup, 1)`` times untimed (the first one counting FLOPs), then ``repeats`` times,
    timed (the median counts); any other call (an encoder, a VAE decode) runs once, timed."""

    device: str
    warmup: int = 1
    repeats: int = 2

    @property
    def device_name(self) -> str:
        device = torch.device(self.device)
        return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


_EXECUTION: contextvars.ContextVar[Execution | None] = contextvars.ContextVar("fakecost_execution", default=None)


@contextlib.contextmanager
def run_for_real(device: str | torch.device, warmup: int = 1, repeats: int = 2) -> Iterator[Execution]:
    """Inside the block, every new :class:`FakeStage` builds its components on ``device`` (random weights) and
    times its calls there instead of running them on FakeTensors: a cost model doubles as a timing harness."""
    execution = Execution(str(device), warmup, repeats)
    token = _EXECUTION.set(execution)
    try:
        yield execution
    finally:
        _EXECUTION.reset(token)


def current_execution() -> Execution | None:
    """The :func:`run_for_real` in effect, or None (FakeTensors)."""
    return _EXECUTION.get()


class FakeStage:
    """The components of one stage (e.g. a pipeline) and the calls one generation makes with them, on FakeTensors
    (or, inside :func:`run_for_real`, for real on a device with random weights).

    ``build`` makes a component from an ``nn.Module`` factory (on the meta device, or on the device) in the stage's
    dtype (or its own) and keeps it *resident* (a pipeline on the GPU holds every component at once); ``adopt``
    does the same with a module built elsewhere (a tiny preset's, or one built inside :meth:`constructing`);
    ``add`` lists a call and how often one generation makes it; ``measure`` runs each call once (FLOPs, and the
    peak with every resident weight counted, :func:`measure_pieces`) or times it (:class:`Execution`).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.mode = FakeTensorMode()
        self.dtype = dtype
        self.execution = current_execution()
        self.resident: list[torch.nn.Module] = []
        self.pieces: list[Piece] = []

    @contextlib.contextmanager
    def constructing(self, dtype: torch.dtype | None = None) -> Iterator[None]:
        """Modules created in the block get their tensors where this stage keeps them: the meta device, or (for
        real) the execution's device, in ``dtype`` (default the stage's) from the start (no float32 copy)."""
        if self.execution is None:
            with torch.device("meta"):
                yield
            return
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype or self.dtype)
        try:
            with torch.device(self.execution.device):
                yield
        finally:
            torch.set_default_dtype(previous)

    def build(self, factory: Callable[[], torch.nn.Module], dtype: torch.dtype | None = None,
              keep_float32: Iterable[str] = ()) -> Any:
        with self.constructing(dtype):
            module = factory()
        return self.adopt(module, dtype, keep_float32)

    def adopt(self, module: torch.nn.Module, dtype: torch.dtype | None = None, keep_float32: Iterable[str] = ()
              ) -> Any:
        target = "meta" if self.execution is None else self.execution.device
        module = prepare_module(module.to(target), dtype or self.dtype, keep_float32)
        if self.execution is None:
            module = fake_module(module, self.mode)
        self.resident.append(module)
        return module

    def add(self, name: str, run: Callable[[], Any], calls: float = 1, note: str = "",
            tracked: Callable[[], Iterable[torch.Tensor]] | None = None) -> None:
        self.pieces.append(Piece(name, run, calls, note, tracked=tracked))

    def measure(self, memory: bool = True) -> PiecesCost:
        if self.execution is not None:
            return time_pieces(self.pieces, self.execution, self.resident)
        return measure_pieces(self.pieces, self.mode, self.resident, memory)


def time_pieces(pieces: Sequence[Piece], execution: Execution, resident: Sequence[torch.nn.Module]) -> PiecesCost:
    """Run each piece for real on ``execution.device`` (see :class:`Execution`): seconds per call, FLOPs, peak."""
    device = torch.device(execution.device)
    cuda = device.type == "cuda"
    weights = module_bytes(*resident)
    result = PiecesCost(resident_bytes=weights, device=execution.device_name)
    # memory the device held before, not this stage's (e.g. other models of the process): not part of its peaks
    foreign = torch.cuda.memory_allocated(device) - weights if cuda else 0

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.device(device), torch.no_grad():
        for piece in pieces:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            repeated = piece.calls > 2
            sync()
            started = time.perf_counter()
            _, flops = count_flops(piece.run)
            sync()
            times = [time.perf_counter() - started]
            if repeated:
                times = []
                for index in range(max(execution.warmup - 1, 0) + execution.repeats):
                    started = time.perf_counter()
                    piece.run()
                    sync()
                    if index >= execution.warmup - 1:
                        times.append(time.perf_counter() - started)
            peak = torch.cuda.max_memory_allocated(device) - foreign if cuda else weights
            result.pieces.append(PieceCost(piece.name, piece.calls, flops, max(peak, weights), piece.note,
                                           seconds_per_call=statistics.median(times)))
    return result


# --- calls of common model kinds (inputs made inside the call, under the stage's FakeTensorMode) ------------------
def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def denoiser_calls(scheduler: Any, steps: int) -> int:
    """How many times a sampling loop over ``scheduler.timesteps`` calls the denoiser for ``steps`` steps (a
    diffusers scheduler; e.g. PNDM's PLMS: steps + 1; DDIM, Euler, UniPC, DDPM: steps)."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def token_ids(length: int, batch: int = 1) -> torch.Tensor:
    """``(batch, length)`` token ids (all ones: the values do not matter on FakeTensors)."""
    return torch.ones(batch, length, dtype=torch.long)


def text_call(encoder: torch.nn.Module, length: int, batch: int = 1, **kwargs: Any) -> Callable[[], Any]:
    """A text encoder (CLIP, T5, ...) on ``batch`` prompts of ``length`` tokens."""
    return lambda: encoder(token_ids(length, batch), **kwargs)


def image_call(encoder: torch.nn.Module, size: int, batch: int = 1, **kwargs: Any) -> Callable[[], Any]:
    """An image encoder (e.g. a CLIP vision tower) on ``batch`` images of ``size`` x ``size``."""
    return lambda: encoder(pixel_values=torch.randn(batch, 3, size, size, dtype=module_dtype(encoder)), **kwargs)


def vae_decode_call(vae: torch.nn.Module, latent_shape: tuple[int, ...], **kwargs: Any) -> Callable[[], Any]:
    """``vae.decode`` (a diffusers autoencoder) of latents of ``latent_shape`` in the VAE's dtype."""
    return lambda: cast("Callable[..., Any]", vae.decode)(
        torch.randn(*latent_shape, dtype=module_dtype(vae)), **kwargs).sample


def vae_encode_call(vae: torch.nn.Module, pixel_shape: tuple[int, ...]) -> Callable[[], Any]:
    """``vae.encode`` (a diffusers autoencoder) of pixels of ``pixel_shape`` in the VAE's dtype, the posterior's
    mode."""
    return lambda: cast("Callable[..., Any]", vae.encode)(
        torch.randn(*pixel_shape, dtype=module_dtype(vae))).latent_dist.mode()
