"""CustomVideoX attention math: TAB (Eq. 6-7), ERAE (Eq. 8), the fused log-sum-exp path vs a dense softmax."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from customvideox.attention import (
    attention_with_lse,
    attention_with_lse_math,
    entity_attention_map,
    entity_region_mask,
    gather_entity_tokens,
    merge_attention,
    normalize_per_frame,
    reference_attention,
    time_aware_bias,
)

B, H, D = 2, 3, 16
N_MAIN, N_REF, N_Q = 53, 11, 37


def _qkv(seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    make = lambda n: (torch.randn(B, H, n, D, generator=g) * 1.5).requires_grad_(requires_grad)
    return make(N_Q), make(N_MAIN), make(N_MAIN), make(N_REF), make(N_REF)


def _dense_reference(q, k_main, v_main, k_ref, v_ref, bias):
    """softmax(Q K^T / sqrt(d) + dense bias) V with the (queries x keys) bias tensor materialized."""
    k, v = torch.cat([k_main, k_ref], dim=2), torch.cat([v_main, v_ref], dim=2)
    dense = torch.zeros(B, 1, q.shape[2], k.shape[2])
    dense[..., N_MAIN:] = bias[:, None, :, None]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D) + dense
    return torch.softmax(scores, dim=-1) @ v


# --------------------------------------------------------------------------------------- TAB, Eq. 6-7


def test_tab_values_at_boundaries_and_middle():
    T = 1000
    values = time_aware_bias(torch.tensor([0.0, T / 2, T]), T, gamma=10.0, eps=0.1)
    # M(0) = M(T) = -10 + 0.1, M(T/2) = 0.1
    assert values[0].item() == pytest.approx(math.tanh(-9.9), abs=1e-7)
    assert values[2].item() == pytest.approx(math.tanh(-9.9), abs=1e-7)
    assert values[1].item() == pytest.approx(math.tanh(0.1), abs=1e-7)
    assert values[1].item() == pytest.approx(0.0996679946, abs=1e-7)
    assert values[0].item() < -0.9999
    # quarter point: M = -10 * 0.25 + 0.1 = -2.4
    assert time_aware_bias(250.0, T).item() == pytest.approx(math.tanh(-2.4), abs=1e-6)


# -------------------------------------------------------------------------------------- ERAE, Eq. 8


def test_entity_region_mask_on_hand_made_map():
    attn = torch.tensor(
        [
            [[0.0, 1.0, 2.0], [3.0, 4.0, 10.0]],  # normalizes to 0, .1, .2, .3, .4, 1
            [[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]],  # flat frame: empty region
            [[0.02, 0.03, 0.02], [0.02, 0.02, 0.12]],  # normalizes to 0, .1, 0, 0, 0, 1
        ]
    )[None]
    norm = normalize_per_frame(attn)
    assert torch.allclose(norm[0, 0], torch.tensor([[0.0, 0.1, 0.2], [0.3, 0.4, 1.0]]))
    mask = entity_region_mask(attn, threshold=0.1)
    expected = torch.tensor(
        [
            [[False, False, True], [True, True, True]],
            [[False, False, False], [False, False, False]],
            [[False, False, False], [False, False, True]],
        ]
    )
    assert torch.equal(mask[0], expected)
    assert torch.equal(entity_region_mask(attn, threshold=0.35)[0, 0], torch.tensor([[False] * 3, [False, True, True]]))


def test_gather_entity_tokens():
    mask = torch.tensor([[False, True, False, True, True], [False] * 5, [True, False, False, False, False]])
    index, valid = gather_entity_tokens(mask)
    assert index.shape == valid.shape == (3, 3)
    assert index[0].tolist() == [1, 3, 4] and valid[0].tolist() == [True, True, True]
    assert valid[1].tolist() == [False, False, False]
    assert index[2, 0].item() == 0 and valid[2].tolist() == [True, False, False]


def test_entity_attention_map_is_softmax_probability_over_main_keys():
    q, k_main, v_main, _, _ = _qkv(1)
    entity = torch.zeros(B, N_MAIN, dtype=torch.bool)
    entity[0, [2, 5]] = True
    entity[1, [7]] = True
    index, valid = gather_entity_tokens(entity)
    k_entity = torch.gather(k_main, 2, index[:, None, :, None].expand(-1, H, -1, D))
    _, lse = attention_with_lse(q, k_main, v_main)
    got = entity_attention_map(q, k_entity, valid, lse, 1 / math.sqrt(D))
    probs = torch.softmax(q @ k_main.transpose(-1, -2) / math.sqrt(D), dim=-1)  # (B, H, Nq, Nk)
    want = torch.stack([probs[0][..., [2, 5]].mean(-1).mean(0), probs[1][..., 7].mean(0)])
    assert (got - want).abs().max() < 1e-6


# ----------------------------------------------------------------------------------- fused attention


def test_attention_with_lse_matches_exact_math():
    q, k, v, _, _ = _qkv(2)
    out, lse = attention_with_lse(q, k, v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    assert lse.shape == (B, H, N_Q) and lse.dtype == torch.float32
    assert (lse - torch.logsumexp(scores, -1)).abs().max() < 1e-5
    assert (out - torch.softmax(scores, -1) @ v).abs().max() < 1e-5
    out_m, lse_m = attention_with_lse_math(q, k, v, max_elements=B * H * N_MAIN * 5)  # several chunks
    assert (lse_m - torch.logsumexp(scores, -1)).abs().max() < 1e-5
    assert (out_m - out).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["tab", "tab+erae-like", "large"])
def test_fused_reference_attention_matches_dense_softmax(kind):
    q, k_main, v_main, k_ref, v_ref = _qkv(3)
    g = torch.Generator().manual_seed(4)
    bias = torch.full((B, N_Q), math.tanh(0.1))
    if kind == "tab+erae-like":
        bias = bias + 0.1 * (torch.rand(B, N_Q, generator=g) > 0.5)
    if kind == "large":
        bias = torch.randn(B, N_Q, generator=g) * 8
    want = _dense_reference(q, k_main, v_main, k_ref, v_ref, bias)
    got = reference_attention(q, k_main, v_main, k_ref, v_ref, bias)
    assert (got - want).abs().max() < 1e-5
    got_naive = reference_attention(q, k_main, v_main, k_ref, v_ref, bias, backend="naive")
    assert (got_naive - want).abs().max() < 1e-5


def test_bias_function_receives_main_lse():
    q, k_main, v_main, k_ref, v_ref = _qkv(5)
    seen = {}

    class Bias:
        needs_lse = True

        def __call__(self, lse_main):
            seen["lse"] = lse_main
            return (lse_main.mean(1) > lse_main.mean()).float() * 0.7  # a data-dependent, ERAE-like bias

    got = reference_attention(q, k_main, v_main, k_ref, v_ref, Bias())
    lse_true = torch.logsumexp(q @ k_main.transpose(-1, -2) / math.sqrt(D), -1)
    assert (seen["lse"] - lse_true).abs().max() < 1e-5
    want = _dense_reference(q, k_main, v_main, k_ref, v_ref, (lse_true.mean(1) > lse_true.mean()).float() * 0.7)
    assert (got - want).abs().max() < 1e-5


def test_no_bias_is_plain_attention_over_all_keys():
    q, k_main, v_main, k_ref, v_ref = _qkv(6)
    want = _dense_reference(q, k_main, v_main, k_ref, v_ref, torch.zeros(B, N_Q))
    assert (reference_attention(q, k_main, v_main, k_ref, v_ref, None) - want).abs().max() < 1e-5


def test_minus_infinity_bias_equals_removing_the_reference():
    q, k_main, v_main, k_ref, v_ref = _qkv(7)
    bias = torch.full((B, N_Q), -math.inf)
    got = reference_attention(q, k_main, v_main, k_ref, v_ref, bias)
    alone, _ = attention_with_lse(q, k_main, v_main)
    assert torch.equal(got, alone)
    assert (got - F.scaled_dot_product_attention(q, k_main, v_main)).abs().max() < 1e-6
    # the same limit through the merge formula with a very negative finite bias
    out_m, lse_m = attention_with_lse(q, k_main, v_main)
    out_r, lse_r = attention_with_lse(q, k_ref, v_ref)
    assert (merge_attention(out_m, lse_m, out_r, lse_r, torch.tensor(-1e4)) - alone).abs().max() < 1e-6
    # and the differentiable route agrees
    q.requires_grad_(True)
    assert (reference_attention(q, k_main, v_main, k_ref, v_ref, bias) - alone).abs().max() < 1e-5


def test_differentiable_route_matches_dense_values_and_gradients():
    inputs = _qkv(8, requires_grad=True)
    bias = torch.linspace(-2, 2, N_Q)[None].repeat(B, 1)
    got = reference_attention(*inputs, bias)
    grads = torch.autograd.grad(got.square().sum(), inputs)
    dense_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    want = _dense_reference(*dense_inputs, bias)
    want_grads = torch.autograd.grad(want.square().sum(), dense_inputs)
    assert (got - want).abs().max() < 1e-5
    for g_got, g_want in zip(grads, want_grads):
        assert (g_got - g_want).abs().max() < 1e-4


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        self.ops.append((str(func), [tuple(t.shape) for t in flat if isinstance(t, torch.Tensor)]))
        return out


def test_fast_path_uses_fused_kernels_and_never_builds_a_logit_matrix():
    q, k_main, v_main, k_ref, v_ref = _qkv(9)
    entity = torch.zeros(B, N_MAIN, dtype=torch.bool)
    entity[:, 3] = True
    index, valid = gather_entity_tokens(entity)

    class ErAeLike:
        needs_lse = True

        def __call__(self, lse_main):
            k_e = torch.gather(k_main, 2, index[:, None, :, None].expand(-1, H, -1, D))
            return 0.1 * (entity_attention_map(q, k_e, valid, lse_main, D**-0.5) > 0.01).float() + math.tanh(0.1)

    with torch.no_grad(), _OpRecorder() as rec:
        reference_attention(q, k_main, v_main, k_ref, v_ref, ErAeLike())
    names = [name for name, _ in rec.ops]
    assert sum("flash_attention" in n for n in names) == 2, names  # two fused calls, nothing else attends
    logit_shapes = {(N_Q, N_MAIN), (N_Q, N_REF), (N_Q, N_MAIN + N_REF)}
    for name, shapes in rec.ops:
        for shape in shapes:
            assert tuple(shape[-2:]) not in logit_shapes, (name, shape)


def test_fused_kernel_wrappers_are_checked_before_use():
    from customvideox import attention as A

    q, k, v, _, _ = _qkv(10)
    assert A._verify_backend("cpu-flash-test", A._lse_cpu_flash, q, k, v)

    def wrong_lse(q, k, v, scale):  # a kernel returning base-2 LSE would silently break the merge
        out, lse = A._lse_cpu_flash(q, k, v, scale)
        return out, lse / math.log(2)

    assert not A._verify_backend("wrong-test", wrong_lse, q, k, v)
    # LSE layouts of the CUDA kernels: cuDNN (B, H, L, 1), memory-efficient padded to 32
    lse = torch.randn(B, H, N_Q)
    assert torch.equal(A._normalize_lse(lse[..., None], q), lse)
    padded = torch.cat([lse, torch.full((B, H, 64 - N_Q), 7.0)], dim=-1)
    assert torch.equal(A._normalize_lse(padded, q), lse)
