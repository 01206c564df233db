"""The forward the published Grad-ECLIP pipeline explains on BLIP, written out so that it can be measured.

Source (facts only): github.com/Cyang-Zhao/Grad-Eclip, ``gradeclip_adaptation_blip.ipynb``, on Salesforce's
BLIP retrieval model (ITC head). It explains the ITC cosine ``normalize(vision_proj(x_cls)) .
normalize(text_proj(t_cls))`` of a rewritten image forward:

- the LAST block's attention recomputed with ONE head over the full width D, while the softmax scale stays
  the model's ``1/sqrt(D/H)`` (the block's own ``attn.scale``; CLIP's published rewrite uses ``1/sqrt(D)``):
  ``A = softmax(q k^T / sqrt(D/H))``, ``o = A v``, ``x + W_proj o + b``, then ``+ MLP(LN_2(.))``; q, k, v
  are the fused ``qkv`` projection's thirds (``[0:D]``, ``[D:2D]``, ``[2D:3D]``);
- the keep-size input (``keepsize.keep_size_pixels`` with no short-side cap: the notebook has none) with
  the position table resized bicubically (``align_corners=False``) from the model's grid to the input's;
- the map: ``ReLU(lambda_j sum_c g_c v_jc)`` over the patches, g = dS/do at the class token, lambda the
  min-max normalised cosine of the RAW q (class token) and k (patches); the image side only.

The notebook's model is built at 224 px (its position table resized once at loading); here the position
table is the model's own, resized to the keep-size grid in one step. ``heads=None`` recomputes a block with
the model's own heads: an identity on the model's forward (tested), the audit's ablation arm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from faithclip.methods.official.rewrite import BlockTrace


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``heads`` heads of width ``D / heads`` with the softmax scale ``scale``: q, k, v ``(B, T, D)`` ->
    output ``(B, T, D)`` (heads concatenated) and probabilities ``(B, heads, T, T)``."""
    batch, tokens, width = q.shape
    split = (batch, tokens, heads, width // heads)
    qh, kh, vh = (t.reshape(split).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d) each
    probs = ((qh @ kh.transpose(-1, -2)) * scale).softmax(dim=-1)  # (B, h, T, T)
    return (probs @ vh).transpose(1, 2).reshape(batch, tokens, width), probs


def recompute_block(layer: Any, hidden: torch.Tensor, heads: int | None = 1) -> tuple[torch.Tensor, BlockTrace]:
    """One BLIP vision block from its own weights with ``heads`` heads (``None``: the model's), the model's scale."""
    attn = layer.self_attn
    heads = int(attn.num_heads) if heads is None else heads
    width = hidden.shape[-1]
    qkv = attn.qkv(layer.layer_norm1(hidden))  # (B, T, 3D): [q | k | v]
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
    attn_out, probs = attention(q, k, v, heads, float(attn.scale))
    mid = hidden + attn.projection(attn_out)  # (B, T, D)
    out = mid + layer.mlp(layer.layer_norm2(mid))
    return out, BlockTrace(q=q, k=k, v=v, attn=probs, attn_out=attn_out, hidden_in=hidden)


def vision_tokens(model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Embedded tokens ``(B, 1 + gh*gw, D)`` of pixels of any size divisible by the patch, and the grid."""
    embeddings = model.vision_model.embeddings
    patch = embeddings.patch_size
    if pixels.shape[-2] % patch or pixels.shape[-1] % patch:
        raise ValueError(f"pixels {tuple(pixels.shape[-2:])} are not multiples of the patch size {patch}")
    patches = embeddings.patch_embedding(pixels.to(embeddings.patch_embedding.weight.dtype))  # (B, D, gh, gw)
    grid = tuple(patches.shape[-2:])
    patches = patches.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
    cls = embeddings.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # (B, 1, D)
    table = embeddings.position_embedding[0]  # (1 + g*g, D)
    trained = int(round((table.shape[0] - 1) ** 0.5))
    square = table[1:].reshape(1, trained, trained, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    positions = torch.cat([table[:1], resized.flatten(2)[0].T], dim=0)  # (1 + gh*gw, D)
    return torch.cat([cls, patches], dim=1) + positions, grid


def encode_image_rewritten(
    model: Any, pixels: torch.Tensor, *, heads: int | None = 1, layers: int = 1
) -> tuple[torch.Tensor, list[BlockTrace], tuple[int, int]]:
    """ITC image features ``(B, E)`` of the rewritten forward (last ``layers`` blocks with ``heads`` heads),
    one trace per recomputed block and the patch grid (the signature of ``rewrite.encode_image_rewritten``)."""
    blocks = model.vision_model.encoder.layers
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"layers must be between 1 and {len(blocks)}, got {layers}")
    hidden, grid = vision_tokens(model, pixels)
    for layer in blocks[: len(blocks) - layers]:
        hidden = layer(hidden)
    traces = []
    for layer in blocks[len(blocks) - layers :]:
        hidden, trace = recompute_block(layer, hidden, heads)
        traces.append(trace)
    pooled = model.vision_model.post_layernorm(hidden[:, 0])  # (B, D); a LayerNorm acts per token
    return model.vision_proj(pooled), traces, grid


def image_maps(
    ctx: Any, pixels: torch.Tensor, layers: int, lambda_qk: str, model: Any | None = None, heads: int | None = 1
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """BLIP's published maps of ONE input (``formula.embedding_image_maps`` through this rewrite)."""
    from faithclip.methods.official.formula import embedding_image_maps

    return embedding_image_maps(ctx, pixels, layers, lambda_qk, model, heads, encode_image_rewritten)


def image_embeds(model: Any, pixels: torch.Tensor, heads: int | None) -> torch.Tensor:
    """The image embeddings of the published forward with the last block recomputed with ``heads`` heads
    (``None``: the model's own), positions interpolated to the pixels' grid (the audit's arms)."""
    return encode_image_rewritten(model, pixels, heads=heads, layers=1)[0]


__all__ = ["image_maps", "image_embeds", "attention", "recompute_block", "vision_tokens", "encode_image_rewritten"]
