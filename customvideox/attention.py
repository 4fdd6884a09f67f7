"""3D Reference Attention with the time-aware bias and entity region-aware enhancement.

Paper section 4 (Eq. 4, 6, 7, 8). Every block runs one attention over ``[z_text, z_video, z_ref]``
(diffusers orders text first). The biases only touch the logits of *reference keys*, and for a given
query they are the same for every reference key::

    b_q = tanh(M(t))                       for text and video queries (TAB, Eq. 6-7)
        + b1 * R_e[q]                      for video queries (ERAE, Eq. 8)
    attention_q = softmax([s_q,main ; s_q,ref + b_q]) [V_main ; V_ref]

so the biased attention is exactly a log-sum-exp merge of two unbiased attentions::

    o_main, L_main = attn(q, K_main, V_main)       (the vanilla CogVideoX call: fused kernel)
    o_ref,  L_ref  = attn(q, K_ref,  V_ref)        (a small fused call over the reference keys)
    attention_q = w o_main + (1 - w) o_ref,  w = sigmoid(L_main - L_ref - b_q)

No (queries x keys) bias tensor exists anywhere and both calls stay on fused kernels (cuDNN / flash /
memory-efficient SDPA on CUDA, the fused CPU flash kernel on CPU). ERAE's entity map is read off the same
``L_main``: the probability of video query q on entity token e is ``exp(q.k_e / sqrt(d) - L_main[q])``,
which only needs the handful of entity keys.

When gradients are needed (training the reference LoRA) the internal LSE outputs are not
differentiable, so the same exact attention runs as one differentiable SDPA call whose head dimension
carries the bias (``q' = [q, b_q / scale]``, ``k' = [k, 1 if reference else 0]``), still fused.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

RotaryEmbedding = tuple[torch.Tensor, torch.Tensor]
#: ERAE's entity tokens: ``(index (B, E) long, valid (B, E) bool)`` from :func:`gather_entity_tokens`.
EntityTokens = tuple[torch.Tensor, torch.Tensor]
logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Eq. 6-7: the time-aware bias
# ---------------------------------------------------------------------------------------------------


def time_aware_bias(
    timestep: torch.Tensor | float,
    num_train_timesteps: int = 1000,
    gamma: float = 10.0,
    eps: float = 0.1,
) -> torch.Tensor:
    """TAB (Eq. 6-7): ``tanh(M(t))`` with ``M(t) = -gamma (2t/T - 1)^2 + eps``.

    Near -1 at t = 0 and t = T (boundary suppression: reference logits lowered by ~1), ``tanh(eps)`` at
    t = T/2 (mid-phase: reference attended almost unbiased). Returns a float32 tensor of ``timestep``'s shape.
    """
    t = torch.as_tensor(timestep, dtype=torch.float32)
    m = -gamma * (2.0 * t / num_train_timesteps - 1.0) ** 2 + eps
    return torch.tanh(m)


# ---------------------------------------------------------------------------------------------------
# Eq. 8: the entity region
# ---------------------------------------------------------------------------------------------------


def _min_max(flat: torch.Tensor) -> torch.Tensor:
    """Min-max scale the last dimension to [0, 1]; a constant row (max == min) maps to zeros."""
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    return torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(flat))


def normalize_per_frame(attn_map: torch.Tensor) -> torch.Tensor:
    """Min-max normalize an attention map ``(..., F, H, W)`` to [0, 1] per frame (ERAE's default, Eq. 8).

    ``A'[f, h, w] = (A[f, h, w] - min_f A) / (max_f A - min_f A)`` over the frame's ``H x W`` tokens. Raw
    attention probabilities of one text token are tiny and shrink with the token count, so a fixed threshold
    lambda = 0.1 needs a rescaled map. Every frame that is not exactly flat gets a region (its maximum is 1),
    with or without the subject; a flat frame (max == min, e.g. all zeros) maps to zeros, an empty region.
    """
    return _min_max(attn_map.float().flatten(-2)).view(attn_map.shape)


def normalize_per_clip(attn_map: torch.Tensor) -> torch.Tensor:
    """Min-max normalize ``(..., F, H, W)`` over the whole clip (all ``F x H x W`` video tokens) for Eq. 8.

    ``A'[f, h, w] = (A[f, h, w] - min A) / (max A - min A)``: frames compete, so a frame whose entity attention
    stays near the clip's minimum (no subject there) gets no region. A flat clip maps to zeros.
    """
    return _min_max(attn_map.float().flatten(-3)).view(attn_map.shape)


#: ERAE's map normalizations (:data:`customvideox.config.ERAE_NORMALIZATIONS`): ``"probability"`` keeps the raw
#: attention probability, so ``R_e = 1[A_e > lambda]`` thresholds it directly.
_NORMALIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "per-frame": normalize_per_frame,
    "per-clip": normalize_per_clip,
    "probability": lambda attn_map: attn_map.float(),
}


def normalize_entity_map(attn_map: torch.Tensor, normalization: str = "per-frame") -> torch.Tensor:
    """ERAE's ``A_e`` (``(..., F, H, W)``) on the scale the threshold lambda of Eq. 8 applies to."""
    if normalization not in _NORMALIZERS:
        raise ValueError(f"erae_normalization={normalization!r}; expected one of {tuple(_NORMALIZERS)}")
    return _NORMALIZERS[normalization](attn_map)


def entity_region_mask(
    attn_map: torch.Tensor, threshold: float = 0.1, normalization: str = "per-frame"
) -> torch.Tensor:
    """ERAE region ``R_e = 1[A_e > lambda]`` (Eq. 8) on the map normalized by ``normalization``.

    Returns a bool tensor of ``attn_map``'s shape ``(..., F, H, W)``.
    """
    return normalize_entity_map(attn_map, normalization) > threshold


def gather_entity_tokens(entity_token_mask: torch.Tensor) -> EntityTokens:
    """Turn a ``(B, L)`` bool mask of entity text tokens into padded indices ``(B, E)`` and validity ``(B, E)``.

    ``E`` is the largest entity-token count in the batch (at least 1). A sample without entity tokens has
    no valid entry: ERAE is off for it.
    """
    mask = entity_token_mask.bool()
    counts = mask.sum(-1)
    num = max(int(counts.max().item()) if mask.numel() else 0, 1)
    # Stable sort puts the True positions first, in order.
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :num]
    valid = torch.arange(num, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def entity_token_indices(entity_token_mask: torch.Tensor) -> EntityTokens | None:
    """:func:`gather_entity_tokens`, or ``None`` when no sample has an entity token (ERAE off for the batch).

    The two data-dependent decisions of a forward call (is there an entity; how many tokens) live here, so a
    shape-only run (:mod:`customvideox.fake_tensors`) can replace this one function.
    """
    mask = entity_token_mask.bool()
    return gather_entity_tokens(mask) if mask.any() else None


def entity_attention_map(
    q_video: torch.Tensor,
    k_entity: torch.Tensor,
    entity_valid: torch.Tensor,
    lse_main: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """A_e: attention probability of each video query on the entity tokens (Eq. 8's activation).

    ``p(q, e) = exp(q.k_e * scale - L_main(q))`` is the softmax probability in the base (text + video)
    attention, averaged over the valid entity tokens and over heads.

    Args:
        q_video: ``(B, heads, N_video, d)`` video queries (after norm and RoPE).
        k_entity: ``(B, heads, E, d)`` keys of the entity text tokens.
        entity_valid: ``(B, E)`` bool, False for padding.
        lse_main: ``(B, heads, N_video)`` log-sum-exp of the video queries over the text + video keys.
        scale: softmax scale.

    Returns:
        ``(B, N_video)`` float32 map (zeros for samples without entity tokens).
    """
    scores = torch.matmul(q_video.float(), k_entity.float().transpose(-1, -2)) * scale
    probs = torch.exp(scores - lse_main.float().unsqueeze(-1))
    weights = entity_valid.float() / entity_valid.sum(-1, keepdim=True).clamp_min(1)
    return (probs * weights[:, None, None, :]).sum(-1).mean(1)


# ---------------------------------------------------------------------------------------------------
# Attention with log-sum-exp, and the exact merge
# ---------------------------------------------------------------------------------------------------


def _lse_cudnn(q, k, v, scale):
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)
    return out[0], out[1]


def _lse_flash(q, k, v, scale):
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    return out[0], out[1]


def _lse_efficient(q, k, v, scale):
    out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
    return out[0], out[1]


def _lse_cpu_flash(q, k, v, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)


#: Fused kernels that return their log-sum-exp, fastest first (cuDNN was the fastest on the H100, DESIGN.md).
CUDA_LSE_BACKENDS: dict[str, Callable] = {"cudnn": _lse_cudnn, "flash": _lse_flash, "efficient": _lse_efficient}
_backend_ok: dict[tuple, bool] = {}


def attention_with_lse_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, max_elements: int = 1 << 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention and log-sum-exp in float32, computed in query chunks (bounded memory).

    The reference implementation behind :func:`attention_with_lse` when no fused kernel applies.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rows = max(1, max_elements // max(1, q.shape[0] * q.shape[1] * k.shape[-2]))
    kf, vf = k.float().transpose(-1, -2), v.float()
    outs, lses = [], []
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start : start + rows, :].float(), kf) * scale
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), vf).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


def _normalize_lse(lse: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    batch, heads, num_q = q.shape[0], q.shape[1], q.shape[2]
    if lse.dim() == 4:  # cuDNN returns (B, H, L, 1)
        lse = lse.squeeze(-1)
    return lse[..., :num_q].reshape(batch, heads, num_q).float()  # memory-efficient pads L to 32


def _layout(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(sorted(range(t.dim()), key=lambda i: (t.stride(i), i)))


def _random_like_layout(t: torch.Tensor, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """A random ``(2, 3, seq_len, d)`` tensor whose dimensions are laid out in memory like ``t``'s."""
    shape = (2, 3, seq_len, t.shape[-1])
    outer_first = list(reversed(_layout(t)))
    x = torch.randn([shape[i] for i in outer_first], generator=gen, device=t.device, dtype=t.dtype)
    return x.permute([outer_first.index(i) for i in range(len(shape))])


def _verify_backend(name: str, fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Check a fused LSE kernel once per (backend, dtype, head dims, memory layout) against the exact math.

    The check runs on small random tensors with the inputs' memory layout, so a kernel that
    mishandles this layout is never used.
    """
    key = (name, q.device, q.dtype, q.shape[-1], v.shape[-1], _layout(q), _layout(k), _layout(v))
    if key not in _backend_ok:
        gen = torch.Generator(device=q.device).manual_seed(0)
        tq, tk, tv = (_random_like_layout(t, n, gen) for t, n in ((q, 77), (k, 45), (v, 45)))
        try:
            out, lse = fn(tq, tk, tv, 0.3)
            ref_out, ref_lse = attention_with_lse_math(tq, tk, tv, 0.3)
            tol = 1e-4 if q.dtype == torch.float32 else 3e-2
            ok = bool(
                (_normalize_lse(lse, tq) - ref_lse).abs().max() < tol
                and (out.float() - ref_out.float()).abs().max() < tol
            )
        except RuntimeError:
            ok = False
        _backend_ok[key] = ok
    return _backend_ok[key]


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns the log-sum-exp of its scaled logits.

    Args:
        q, k, v: ``(B, heads, N, d)`` tensors (``v`` may have its own head dim).
        scale: logit scale, default ``1 / sqrt(d)``.

    Returns:
        ``(out, lse)``: ``out`` ``(B, heads, N_q, d_v)`` in ``q``'s dtype, ``lse`` ``(B, heads, N_q)`` float32
        with ``lse[q] = log sum_k exp(scale * q.k)``.

    On CUDA it calls torch's fused kernels directly (cuDNN, then flash, then memory-efficient; each
    checked once against the exact math on a small problem), on CPU the fused CPU flash kernel, otherwise
    :func:`attention_with_lse_math`. The LSE output is not differentiable (the fused kernels do not
    back-propagate through it): use it under ``torch.no_grad`` or for values only.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.is_cuda:
        for name, fn in CUDA_LSE_BACKENDS.items():
            if not _verify_backend(name, fn, q, k, v):
                continue
            try:
                out, lse = fn(q, k, v, scale)
            except RuntimeError:
                continue
            return out, _normalize_lse(lse, q)
    elif q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16):
        try:
            out, lse = _lse_cpu_flash(q, k, v, scale)
            return out, _normalize_lse(lse, q)
        except RuntimeError:
            pass
    return attention_with_lse_math(q, k, v, scale)


def _merge_eager(out_a, lse_a, out_b, lse_b, bias_b):
    logit = lse_a - lse_b
    if bias_b is not None:
        logit = logit - bias_b
    weight = torch.sigmoid(logit).unsqueeze(-1)
    return torch.lerp(out_b.float(), out_a.float(), weight).to(out_a.dtype)


#: On CUDA the merge runs as one torch.compile'd elementwise kernel (no float32 temporaries in memory);
#: set to False to always use eager. A failing compile falls back to eager once, with a warning.
COMPILE_MERGE_ON_CUDA = True
_compiled_merge: Callable | None = None


def merge_attention(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    bias_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact softmax over two key blocks from their partial results; ``bias_b`` is added to block b's logits.

    ``out = (e^{L_a} o_a + e^{L_b + b} o_b) / (e^{L_a} + e^{L_b + b}) = lerp(o_b, o_a, sigmoid(L_a - L_b - b))``,
    computed in float32. ``bias_b`` broadcasts against ``lse_b`` (e.g. ``(B, 1, N_q)``); a bias of ``-inf``
    returns ``out_a`` exactly.
    """
    global _compiled_merge, COMPILE_MERGE_ON_CUDA
    if out_a.is_cuda and COMPILE_MERGE_ON_CUDA and not torch.compiler.is_compiling():
        try:
            if _compiled_merge is None:
                _compiled_merge = torch.compile(_merge_eager, dynamic=False)
            return _compiled_merge(out_a, lse_a, out_b, lse_b, bias_b)
        except Exception as error:  # no triton, unsupported GPU, ...: stay correct, lose a little speed
            COMPILE_MERGE_ON_CUDA = False
            logger.warning("customvideox: compiled attention merge unavailable (%s); using eager", error)
    return _merge_eager(out_a, lse_a, out_b, lse_b, bias_b)


def lse_backend_status() -> dict[str, bool]:
    """Which fused LSE kernels passed their one-time check (``"name dtype d layout": ok``), for reports."""
    return {f"{k[0]} {k[2]} d={k[3]} layout={k[5]}": v for k, v in _backend_ok.items()}


class BiasFunction(Protocol):
    """A per-query reference-key bias ``(B, N_q)``, possibly computed from the main block's LSE."""

    needs_lse: bool

    def __call__(self, lse_main: torch.Tensor | None) -> torch.Tensor: ...


BiasLike = torch.Tensor | BiasFunction | None


def _resolve_bias(bias: BiasLike, lse_main: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None or isinstance(bias, torch.Tensor):
        return bias
    return bias(lse_main)


def _needs_lse(bias: BiasLike) -> bool:
    return bias is not None and not isinstance(bias, torch.Tensor) and bool(getattr(bias, "needs_lse", True))


class AttentionMemoryError(MemoryError):
    """An attention backend would build a dense matrix larger than the memory available (raised before allocating)."""


#: (queries x keys) float32 matrices :func:`naive_reference_attention` holds at once at its peak (the logits and
#: their softmax; or the two logit blocks and their concatenation).
NAIVE_DENSE_COPIES = 2


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device``: CUDA: free device memory plus the caching allocator's
    reserved-but-unused bytes; CPU: ``psutil.virtual_memory().available``; other devices: None (unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def dense_attention_bytes(
    batch: int, heads: int, num_queries: int, num_keys: int, dtype: torch.dtype = torch.float32,
    copies: int = NAIVE_DENSE_COPIES,
) -> int:
    """Bytes of ``copies`` dense ``(batch, heads, num_queries, num_keys)`` matrices of ``dtype``."""
    element = torch.empty((), dtype=dtype).element_size()
    return copies * batch * heads * num_queries * num_keys * element


def _gigabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.1f} GB"


def check_dense_attention_memory(
    batch: int, heads: int, num_queries: int, num_keys: int, device: torch.device | str,
    backend: str = "naive", dtype: torch.dtype = torch.float32, copies: int = NAIVE_DENSE_COPIES,
) -> None:
    """Refuse, before anything is allocated, an attention that would materialize more than the free memory.

    Raises:
        AttentionMemoryError: one line naming the backend, the matrix shape, the bytes needed and available,
            and what to use instead.
    """
    needed = dense_attention_bytes(batch, heads, num_queries, num_keys, dtype, copies)
    available = available_memory(device)
    if available is None or needed <= available:
        return
    raise AttentionMemoryError(
        f"attention_backend={backend!r} would build {copies} dense {str(dtype).removeprefix('torch.')} "
        f"(batch {batch} x heads {heads} x queries {num_queries} x keys {num_keys}) matrices: needs "
        f"{_gigabytes(needed)}, {_gigabytes(available)} available on {torch.device(device)}; use "
        "attention_backend='fused' (the default: fused kernels, no dense matrix)"
    )


def naive_reference_attention(
    q: torch.Tensor,
    k_main: torch.Tensor,
    v_main: torch.Tensor,
    k_ref: torch.Tensor,
    v_ref: torch.Tensor,
    bias: BiasLike = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense reference: ``softmax([q K_main^T, q K_ref^T + b] * scale) [V_main; V_ref]`` in float32 (Eq. 4, 6, 8).

    Materializes every logit; for tests and debugging only. Refuses (:class:`AttentionMemoryError`) before
    allocating when its :data:`NAIVE_DENSE_COPIES` float32 logit matrices exceed the free memory.
    """
    if not torch.compiler.is_compiling():
        batch, heads, num_q = q.shape[:3]
        check_dense_attention_memory(batch, heads, num_q, k_main.shape[-2] + k_ref.shape[-2], q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf = q.float()
    s_main = torch.matmul(qf, k_main.float().transpose(-1, -2)) * scale
    s_ref = torch.matmul(qf, k_ref.float().transpose(-1, -2)) * scale
    b = _resolve_bias(bias, torch.logsumexp(s_main, dim=-1) if _needs_lse(bias) else None)
    if b is not None:
        s_ref += b.float()[:, None, :, None]
    scores = torch.cat([s_main, s_ref], dim=-1)
    del s_main, s_ref  # at most two logit-sized matrices alive at once
    probs = torch.softmax(scores, dim=-1)
    del scores
    return torch.matmul(probs, torch.cat([v_main, v_ref], dim=-2).float()).to(q.dtype)


def _bias_in_head_dim_attention(q, k_main, v_main, k_ref, v_ref, bias, scale):
    """Differentiable exact route: the bias rides on an extra (padded) head dimension of one SDPA call."""
    pad = 8  # keep head dims multiples of 8 for the fused kernels
    bias = bias.float().clamp_min(-1e4)  # exp(-1e4) == 0: same as -inf, without inf * 0
    q_extra = q.new_zeros(*q.shape[:-1], pad)
    q_extra[..., 0] = (bias / scale).to(q.dtype)[:, None, :]
    k_main_extra = k_main.new_zeros(*k_main.shape[:-1], pad)
    k_ref_extra = k_ref.new_zeros(*k_ref.shape[:-1], pad)
    k_ref_extra[..., 0] = 1.0
    q2 = torch.cat([q, q_extra], dim=-1)
    k2 = torch.cat([torch.cat([k_main, k_main_extra], dim=-1), torch.cat([k_ref, k_ref_extra], dim=-1)], dim=-2)
    v = torch.cat([v_main, v_ref], dim=-2)
    d_v = v.shape[-1]
    v2 = torch.cat([v, v.new_zeros(*v.shape[:-1], q2.shape[-1] - d_v)], dim=-1)
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale)[..., :d_v]


def reference_attention(
    q: torch.Tensor,
    k_main: torch.Tensor,
    v_main: torch.Tensor,
    k_ref: torch.Tensor,
    v_ref: torch.Tensor,
    bias: BiasLike = None,
    scale: float | None = None,
    backend: str = "fused",
) -> torch.Tensor:
    """Attention of ``q`` over ``[K_main; K_ref]`` with a per-query bias on the reference logits (Eq. 4 + 6 + 8).

    Args:
        q: ``(B, heads, N_q, d)``; k_main/v_main: ``(B, heads, N_main, d)``; k_ref/v_ref: ``(B, heads, N_ref, d)``.
        bias: ``None`` (plain Eq. 4), a ``(B, N_q)`` tensor, or a :class:`BiasFunction` that receives the
            main block's LSE ``(B, heads, N_q)`` (ERAE needs it) and returns ``(B, N_q)``.
        backend: ``"fused"`` (default) or ``"naive"`` (:func:`naive_reference_attention`).

    Without a bias this is one SDPA call over the concatenated keys. With a bias and no gradient it is
    two fused calls merged by :func:`merge_attention`; with gradients one SDPA call with the bias in an
    extra head dimension. All three are exact.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "naive":
        return naive_reference_attention(q, k_main, v_main, k_ref, v_ref, bias, scale)
    if backend != "fused":
        raise ValueError(f"unknown attention backend {backend!r}")
    if bias is None:
        return F.scaled_dot_product_attention(
            q, torch.cat([k_main, k_ref], dim=-2), torch.cat([v_main, v_ref], dim=-2), scale=scale
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_main, v_main, k_ref, v_ref)):
        lse_main = None
        if _needs_lse(bias):
            with torch.no_grad():
                lse_main = attention_with_lse(q.detach(), k_main.detach(), v_main.detach(), scale)[1]
        with torch.no_grad():
            b = _resolve_bias(bias, lse_main)
        return _bias_in_head_dim_attention(q, k_main, v_main, k_ref, v_ref, b, scale)
    out_main, lse_main = attention_with_lse(q, k_main, v_main, scale)
    out_ref, lse_ref = attention_with_lse(q, k_ref, v_ref, scale)
    b = _resolve_bias(bias, lse_main)
    return merge_attention(out_main, lse_main, out_ref, lse_ref, b.float()[:, None, :])


# ---------------------------------------------------------------------------------------------------
# Per-forward bias specification (TAB + ERAE) and the attention processor
# ---------------------------------------------------------------------------------------------------


@dataclass
class ReferenceBias:
    """The reference-key biases of one forward call, turned into a per-layer :class:`BiasFunction`.

    Attributes:
        tab: ``(B,)`` float32 ``tanh(M(t))`` per sample, or None (TAB off).
        entity_index, entity_valid: from :func:`gather_entity_tokens`, or None (ERAE off).
        erae_lambda, erae_b1: Eq. 8 constants.
        erae_normalization: how ``A_e`` is scaled before the threshold (:func:`normalize_entity_map`).
        video_grid: ``(F, H', W')`` token grid of the video (ERAE's per-frame maps).
        entity_maps: if a list, every layer appends its ``(B, F, H', W')`` raw entity map (inspection).
        coverage: if a ``(B,)`` float32 tensor, every layer adds (in place, on its device: no host sync) the
            fraction of each sample's video tokens inside ``R_e`` (a diagnostic; see
            :func:`region_coverage`).
    """

    tab: torch.Tensor | None = None
    entity_index: torch.Tensor | None = None
    entity_valid: torch.Tensor | None = None
    erae_lambda: float = 0.1
    erae_b1: float = 0.1
    erae_normalization: str = "per-frame"
    video_grid: tuple[int, int, int] | None = None
    entity_maps: list | None = field(default=None, repr=False)
    coverage: torch.Tensor | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.tab is not None or self.entity_index is not None

    def for_layer(self, q: torch.Tensor, k: torch.Tensor, text_len: int, scale: float) -> "_LayerBias | None":
        """Bias over the rows of ``q`` = ``[text, video, (reference)]``; reference query rows get 0."""
        return _LayerBias(self, q, k, text_len, scale) if self.active else None


class _LayerBias:
    def __init__(self, spec: ReferenceBias, q: torch.Tensor, k: torch.Tensor, text_len: int, scale: float):
        self.spec, self.q, self.k, self.text_len, self.scale = spec, q, k, text_len, scale
        self.needs_lse = spec.entity_index is not None

    def __call__(self, lse_main: torch.Tensor | None) -> torch.Tensor:
        spec, q = self.spec, self.q
        batch, num_q = q.shape[0], q.shape[2]
        frames, height, width = spec.video_grid
        num_video = frames * height * width
        main_rows = self.text_len + num_video
        bias = torch.zeros(batch, num_q, device=q.device, dtype=torch.float32)
        if spec.tab is not None:
            bias[:, :main_rows] += spec.tab.to(q.device, torch.float32)[:, None]
        if spec.entity_index is not None:
            video = slice(self.text_len, main_rows)
            heads, head_dim = self.k.shape[1], self.k.shape[-1]
            idx = spec.entity_index.to(q.device)[:, None, :, None].expand(-1, heads, -1, head_dim)
            k_entity = torch.gather(self.k[:, :, : self.text_len], 2, idx)
            valid = spec.entity_valid.to(q.device)
            a_e = entity_attention_map(q[:, :, video], k_entity, valid, lse_main[:, :, video], self.scale)
            a_e = a_e.view(batch, frames, height, width)
            if spec.entity_maps is not None:
                spec.entity_maps.append(a_e.detach())
            region = entity_region_mask(a_e, spec.erae_lambda, spec.erae_normalization)
            region = (region & valid.any(-1)[:, None, None, None]).flatten(1).float()
            bias[:, video] += spec.erae_b1 * region
            if spec.coverage is not None:
                spec.coverage.add_(region_coverage(region))
        return bias


def region_coverage(region: torch.Tensor) -> torch.Tensor:
    """The fraction of video tokens inside ``R_e`` per sample: ``(B, N_video)`` (or ``(B, F, H', W')``) -> ``(B,)``."""
    return region.flatten(1).float().mean(1)


def _base(layer: torch.nn.Module) -> torch.nn.Module:
    """The frozen base layer of a peft LoRA layer (the layer itself when no LoRA is injected)."""
    return getattr(layer, "base_layer", layer)


def project_qkv(
    attn: Attention, x: torch.Tensor, use_lora: bool, rotary: RotaryEmbedding | None = None, rotary_start: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v ``(B, heads, N, d)`` of CogVideoX's ``attn1``: projections, QK LayerNorm, RoPE from ``rotary_start``.

    ``use_lora=False`` uses the base weights (video and text tokens), ``True`` the peft layers with the
    active adapter (reference tokens).
    """
    pick = (lambda m: m) if use_lora else _base
    batch = x.shape[0]
    q, k, v = pick(attn.to_q)(x), pick(attn.to_k)(x), pick(attn.to_v)(x)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if rotary is not None:
        if rotary_start == 0:
            q, k = apply_rotary_emb(q, rotary), apply_rotary_emb(k, rotary)
        else:  # same in-place slice update as diffusers' CogVideoXAttnProcessor2_0 (bit-identical results)
            q[:, :, rotary_start:] = apply_rotary_emb(q[:, :, rotary_start:], rotary)
            if not attn.is_cross_attention:
                k[:, :, rotary_start:] = apply_rotary_emb(k[:, :, rotary_start:], rotary)
    return q, k, v


def project_out(attn: Attention, out: torch.Tensor, use_lora: bool) -> torch.Tensor:
    """``(B, heads, N, d)`` -> output projection (``to_out.0`` base or LoRA) and dropout."""
    out = out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[-1])
    out = (attn.to_out[0] if use_lora else _base(attn.to_out[0]))(out)
    return attn.to_out[1](out)


class CustomVideoXAttnProcessor:
    """Attention processor for CogVideoX blocks with a reference stream (3D Reference Attention, Eq. 4).

    Called as a normal diffusers processor (``attn(hidden_states, encoder_hidden_states, image_rotary_emb)``)
    it computes exactly what :class:`diffusers.models.attention_processor.CogVideoXAttnProcessor2_0`
    computes, with the *base* projections, so an injected reference LoRA never touches text or video tokens.
    The reference branch calls :meth:`with_reference` and :meth:`reference_self_attention` directly.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: RotaryEmbedding | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, seq_len, _ = x.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        q, k, v = project_qkv(attn, x, use_lora=False, rotary=image_rotary_emb, rotary_start=text_len)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = project_out(attn, out, use_lora=False)
        encoder_out, hidden_out = out.split([text_len, seq_len - text_len], dim=1)
        return hidden_out, encoder_out

    def reference_self_attention(
        self, attn: Attention, reference_states: torch.Tensor, reference_rotary_emb: RotaryEmbedding | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference stream attending to itself (cached mode / scope "self"), with the LoRA.

        Returns ``(out, k_ref, v_ref)``: the attention output ``(B, N_ref, D)`` and this layer's reference
        keys and values ``(B, heads, N_ref, d)`` (what the cache stores).
        """
        q, k, v = project_qkv(attn, reference_states, use_lora=True, rotary=reference_rotary_emb)
        out = F.scaled_dot_product_attention(q, k, v)
        return project_out(attn, out, use_lora=True), k, v

    def with_reference(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_rotary_emb: RotaryEmbedding | None,
        reference_states: torch.Tensor | None = None,
        reference_rotary_emb: RotaryEmbedding | None = None,
        reference_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: ReferenceBias | None = None,
        scope: str = "all",
        backend: str = "fused",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One 3D Reference Attention (Eq. 4) over ``[text, video, reference]``.

        Text and video tokens use the base projections, reference tokens the LoRA ones. Either
        ``reference_states`` (joint mode: reference tokens computed now) or ``reference_kv`` (cached mode:
        this layer's stored reference keys and values) is given. TAB and ERAE (``bias``) lower or raise
        the reference-key logits of text/video queries; reference queries are never biased.

        Returns ``(video_out, text_out, reference_out or None)``.
        """
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        seq_len = x.shape[1]
        q, k, v = project_qkv(attn, x, use_lora=False, rotary=image_rotary_emb, rotary_start=text_len)
        scale = 1.0 / math.sqrt(q.shape[-1])
        ref_out = None
        if reference_states is not None:
            q_ref, k_ref, v_ref = project_qkv(attn, reference_states, use_lora=True, rotary=reference_rotary_emb)
        elif reference_kv is not None:
            q_ref, (k_ref, v_ref) = None, reference_kv
        else:
            raise ValueError("with_reference needs reference_states (joint) or reference_kv (cached)")
        if q_ref is not None and scope == "all":
            q_all = torch.cat([q, q_ref], dim=2)
            layer_bias = bias.for_layer(q_all, k, text_len, scale) if bias is not None else None
            out = reference_attention(q_all, k, v, k_ref, v_ref, layer_bias, scale, backend)
            out, ref_out = out[:, :, :seq_len], out[:, :, seq_len:]
        else:
            layer_bias = bias.for_layer(q, k, text_len, scale) if bias is not None else None
            out = reference_attention(q, k, v, k_ref, v_ref, layer_bias, scale, backend)
            if q_ref is not None:
                ref_out = F.scaled_dot_product_attention(q_ref, k_ref, v_ref, scale=scale)
        out = project_out(attn, out, use_lora=False)
        encoder_out, hidden_out = out.split([text_len, seq_len - text_len], dim=1)
        if ref_out is not None:
            ref_out = project_out(attn, ref_out, use_lora=True)
        return hidden_out, encoder_out, ref_out
