"""Vision transformers' class-token embeddings with the last block computed for the class token only.

CLIP's image embedding (open_clip ``VisionTransformer``, ``tok`` pooling) and DINO's CLS feature (timm
``VisionTransformer``, ``token`` pooling) read one token of the last block's output. That block's attention needs
the keys and values of every token, but its query, attention output, projection, residuals and MLP are needed for
the class token alone: for ViT-B/32 (50 tokens) and ViT-S/16 (197 tokens) that leaves out about 10/12 of the last
block's matrix products, some 7% of the encoder. The same function up to float rounding (products with fewer rows).

Each function checks that the model is the architecture it knows (the classes, the pooling, no attention pooling,
gates or masks) and otherwise runs the model's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def timm_class_token(vit: Any, images: torch.Tensor) -> torch.Tensor:
    """``vit(images)`` of a timm ``VisionTransformer`` with class-token pooling (DINO), the last block for the class
    token only."""
    if not _is_plain_timm_vit(vit):
        return vit(images)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
    blocks = list(vit.blocks)
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    attention = last.attn
    h = last.norm1(x)
    batch, tokens, _ = h.shape
    heads, head_dim, width = attention.num_heads, attention.head_dim, attention.attn_dim
    weight, bias = attention.qkv.weight, attention.qkv.bias
    q = F.linear(h[:, :1], weight[:width], None if bias is None else bias[:width])
    kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
    q = attention.q_norm(q.view(batch, 1, heads, head_dim).transpose(1, 2))
    k, v = kv.view(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k = attention.k_norm(k)
    if attention.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = ((q * attention.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    out = attention.proj(attention.norm(out.transpose(1, 2).reshape(batch, 1, width)))
    cls = x[:, :1] + last.ls1(out)
    cls = cls + last.ls2(last.mlp(last.norm2(cls)))
    return vit.forward_head(vit.norm(cls))


def _is_plain_timm_vit(vit: Any) -> bool:
    """A timm ViT whose output is the final norm's class token through ``forward_head``, built of timm's own
    ``Block`` / ``Attention`` without gates, in eval mode."""
    try:
        from timm.models.vision_transformer import Attention, Block, VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    if type(vit) is not VisionTransformer or vit.training or getattr(vit, "global_pool", None) != "token":
        return False
    if getattr(vit, "attn_pool", None) is not None or len(vit.blocks) == 0:
        return False
    last = vit.blocks[-1]
    return (type(last) is Block and type(last.attn) is Attention and getattr(last.attn, "gate", None) is None
            and vit.num_prefix_tokens >= 1)


def open_clip_class_token(model: Any, images: torch.Tensor) -> torch.Tensor:
    """``model.encode_image(images)`` of an open_clip CLIP with a ``tok``-pooled ViT image tower (OpenAI's
    models), the last block for the class token only."""
    visual: Any = getattr(model, "visual", None)
    if not _is_plain_open_clip_vit(model, visual):
        return model.encode_image(images)
    x = visual._embeds(images)  # patches, class token, positions, ln_pre
    blocks = list(visual.transformer.resblocks)
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    h = last.ln_1(x)
    out = last.attn(h[:, :1], h, h, need_weights=False)[0]
    cls = x[:, :1] + last.ls_1(out)
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    pooled = visual.ln_post(cls)[:, 0]
    return pooled if visual.proj is None else pooled @ visual.proj


def _is_plain_open_clip_vit(model: Any, visual: Any) -> bool:
    """open_clip's ``CLIP`` with its ``VisionTransformer``: class-token pooling, the final norm before pooling, no
    attention pooler, batch-first residual attention blocks, in eval mode."""
    try:
        import open_clip
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    if getattr(type(model), "encode_image", None) is not open_clip.CLIP.encode_image \
            or type(visual) is not VisionTransformer:
        return False
    if visual.training or getattr(visual, "pool_type", None) != "tok" or getattr(visual, "attn_pool", None) \
            or not hasattr(visual, "_embeds"):
        return False
    if getattr(visual, "final_ln_after_pool", False) or getattr(visual, "output_tokens", False):
        return False
    transformer = visual.transformer
    if not getattr(transformer, "batch_first", False) or len(transformer.resblocks) == 0:
        return False
    last = transformer.resblocks[-1]
    return (type(last) is ResidualAttentionBlock and isinstance(last.attn, nn.MultiheadAttention)
            and not hasattr(last, "ln_1_kv") and last.attn.batch_first)
