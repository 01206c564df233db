"""The forward the official Grad-ECLIP code explains, written out so that it can be measured.

Source: the official implementation of Zhao et al., "Gradient-based Visual Explanation for
Transformer-based CLIP" (ICML 2024), github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py``
(``clip_encode_dense``, ``clip_encode_text_dense``, ``attention_layer``, ``imgprocess_keepsize``) and
the two notebooks; audited in "Debunking Grad-ECLIP" (arXiv 2605.12952).

That code does not differentiate the model's forward. It recomputes the last block(s) by hand with
``attention_layer(q, k, v, num_heads=1)``: ONE attention head over the full width D, i.e.

    A = softmax(q k^T / sqrt(D))            (instead of H heads of width D/H, each scaled by sqrt(D/H))
    o = A v,   block(x) = x + W_o o + b_o,  then  + MLP(LN_2(.))

and (image side) it feeds the whole image resized to multiples of the patch size, with the position
embeddings bicubically interpolated to that grid, while the prediction it explains comes from the
standard resize + centre crop. This module reproduces that forward with the model's own modules and
weights; nothing here touches the model's own forward (the model is only read).

``heads=None`` recomputes a block with the model's own number of heads: an identity on the model's
forward (tested), which is what separates the one-head rewrite from the keep-size input in the ablation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from faithclip.methods.common import normalize_sum
from faithclip.methods.official.formula import official_lambda, official_term, out_proj_for


@dataclass
class BlockTrace:
    """Internals of one recomputed block, with their autograd graph."""

    q: torch.Tensor  # (B, T, D) q_proj output, before any head split
    k: torch.Tensor  # (B, T, D)
    v: torch.Tensor  # (B, T, D)
    attn: torch.Tensor  # (B, h, T, T) attention probabilities of the recomputed heads
    attn_out: torch.Tensor  # (B, T, D) attention output before out_proj
    hidden_in: torch.Tensor  # (B, T, D) input of the block


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with ``heads`` heads of width ``D / heads``.

    q, k, v ``(B, T, D)``; ``mask`` additive ``(T, T)``. Returns the output ``(B, T, D)`` (heads
    concatenated, before out_proj) and the probabilities ``(B, heads, T, T)``.
    ``heads=1`` is the official code's ``attention_layer(q, k, v, 1)``: scale ``1/sqrt(D)``.
    """
    batch, tokens, width = q.shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    head_dim = width // heads
    split = (batch, tokens, heads, head_dim)
    qh = (q * head_dim**-0.5).view(split).transpose(1, 2)  # (B, h, T, hd)
    kh = k.view(split).transpose(1, 2)  # (B, h, T, hd)
    vh = v.view(split).transpose(1, 2)  # (B, h, T, hd)
    logits = qh @ kh.transpose(-1, -2)  # (B, h, T, T)
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1)  # (B, h, T, T)
    out = (probs @ vh).transpose(1, 2).reshape(batch, tokens, width)  # (B, T, D)
    return out, probs


def model_heads(layer: Any) -> int:
    return int(layer.self_attn.num_heads)


def recompute_block(
    layer: Any, hidden: torch.Tensor, heads: int | None = 1, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, BlockTrace]:
    """One pre-LN CLIP block computed from its own weights with ``heads`` heads (``None``: the model's).

    hidden ``(B, T, D)`` -> ``(B, T, D)``, plus the block's internals.
    """
    heads = model_heads(layer) if heads is None else heads
    attn = layer.self_attn
    normed = layer.layer_norm1(hidden)  # (B, T, D)
    q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)  # (B, T, D) each
    attn_out, probs = attention(q, k, v, heads, mask)
    mid = hidden + attn.out_proj(attn_out)  # (B, T, D)
    out = mid + layer.mlp(layer.layer_norm2(mid))  # (B, T, D)
    return out, BlockTrace(q=q, k=k, v=v, attn=probs, attn_out=attn_out, hidden_in=hidden)


def interpolated_positions(model: Any, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings ``(1 + gh*gw, D)`` for a ``grid = (gh, gw)`` patch grid.

    The trained ``(g, g)`` patch positions are resized bicubically (``align_corners=False``), exactly as
    the official ``clip_encode_dense``; on the trained grid this is the identity (checked: bicubic
    resampling to the same size reproduces its input bit for bit).
    """
    embeddings = model.vision_model.embeddings
    table = embeddings.position_embedding.weight  # (1 + g*g, D)
    trained = int(round((table.shape[0] - 1) ** 0.5))
    cls_pos, patch_pos = table[:1], table[1:]
    patch_pos = patch_pos.reshape(1, trained, trained, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    patch_pos = patch_pos.reshape(1, patch_pos.shape[1], -1).permute(0, 2, 1)[0]  # (gh*gw, D)
    return torch.cat([cls_pos, patch_pos], dim=0)  # (1 + gh*gw, D)


def vision_tokens(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Embedded, pre-LayerNormed tokens ``(B, 1 + gh*gw, D)`` of pixels of any size divisible by the patch."""
    embeddings = model.vision_model.embeddings
    patch = embeddings.patch_size
    if pixels.shape[-2] % patch or pixels.shape[-1] % patch:
        raise ValueError(f"pixels {tuple(pixels.shape[-2:])} are not multiples of the patch size {patch}")
    weight = embeddings.patch_embedding.weight
    patches = embeddings.patch_embedding(pixels.to(weight.dtype))  # (B, D, gh, gw)
    grid = tuple(patches.shape[-2:])
    patches = patches.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
    cls = embeddings.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # (B, 1, D)
    tokens = torch.cat([cls, patches], dim=1) + interpolated_positions(model, grid)  # (B, T, D)
    return model.vision_model.pre_layrnorm(tokens)


def encode_image_rewritten(
    model: Any, pixels: torch.Tensor, *, heads: int | None = 1, layers: int = 1
) -> tuple[torch.Tensor, list[BlockTrace], tuple[int, int]]:
    """Image embeddings ``(B, P)`` of the rewritten forward: the last ``layers`` blocks recomputed with
    ``heads`` heads (``None`` = the model's own), position embeddings interpolated to the pixels' grid.

    Returns the embeddings, one trace per recomputed block (in order) and the patch grid ``(gh, gw)``.
    """
    blocks = model.vision_model.encoder.layers
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"layers must be between 1 and {len(blocks)}, got {layers}")
    patch = model.vision_model.embeddings.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    hidden = vision_tokens(model, pixels)  # (B, T, D)
    for layer in blocks[: len(blocks) - layers]:
        hidden = layer(hidden, None)
    traces = []
    for layer in blocks[len(blocks) - layers :]:
        hidden, trace = recompute_block(layer, hidden, heads)
        traces.append(trace)
    pooled = model.vision_model.post_layernorm(hidden[:, 0])  # (B, D); ln_post is per token
    return model.visual_projection(pooled), traces, grid


def causal_mask(tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """OpenAI's ``build_attention_mask``: additive ``(T, T)``, ``-inf`` above the diagonal."""
    mask = torch.full((tokens, tokens), float("-inf"), dtype=dtype, device=device)
    return mask.triu_(1)


def encode_text_rewritten(
    model: Any, input_ids: torch.Tensor, eos_positions: torch.Tensor, *, heads: int | None = 1, layers: int = 8
) -> tuple[torch.Tensor, list[BlockTrace]]:
    """Text embeddings ``(K, P)`` with the last ``layers`` text blocks recomputed with ``heads`` heads.

    Like the official code the only mask is the causal one (padding tokens are attended to by the
    tokens after them, which never reach the pooled end token). ``layers`` is capped at the tower depth.
    """
    text = model.text_model
    blocks = text.encoder.layers
    layers = min(layers, len(blocks))
    hidden = text.embeddings(input_ids=input_ids)  # (K, L, D)
    mask = causal_mask(input_ids.shape[1], hidden.dtype, hidden.device)  # (L, L)
    for layer in blocks[: len(blocks) - layers]:
        hidden = layer(hidden, mask[None, None])
    traces = []
    for layer in blocks[len(blocks) - layers :]:
        hidden, trace = recompute_block(layer, hidden, heads, mask)
        traces.append(trace)
    hidden = text.final_layer_norm(hidden)  # (K, L, D)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_positions]  # (K, D)
    return model.text_projection(pooled), traces


def image_maps(
    ctx: Any, pixels: torch.Tensor, layers: int, lambda_qk: str, model: Any | None = None, heads: int | None = 1
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """CLIP's published maps of ONE input (``formula.embedding_image_maps`` through this rewrite)."""
    from faithclip.methods.official.formula import embedding_image_maps

    return embedding_image_maps(ctx, pixels, layers, lambda_qk, model, heads, encode_image_rewritten)


def image_embeds(model: Any, pixels: torch.Tensor, heads: int | None) -> torch.Tensor:
    """The image embeddings of the published forward with the last block recomputed with ``heads`` heads
    (``None``: the model's own), positions interpolated to the pixels' grid (the audit's arms)."""
    return encode_image_rewritten(model, pixels, heads=heads, layers=1)[0]


def text_maps(ctx: Any, layers: int, lambda_qk: str, model: Any | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Official text maps ``(B, K, L)`` (L = the context's token length) and rewritten scores ``(B, K)``."""
    model = ctx.handle.model if model is None else model
    ids = ctx.handle.context_batch(ctx.text).input_ids  # (K, context): padded with 0 as clip.tokenize
    eos = ctx.text.eos_positions
    blocks = model.text_model.encoder.layers
    layers = min(layers, len(blocks))
    recomputed = list(blocks[len(blocks) - layers :])
    image_embeds = (
        ctx.fixed_image_embeds()
        if model is ctx.handle.model
        else model.get_image_features(pixel_values=ctx.pixels.to(model.logit_scale.dtype)).pooler_output.detach()
    )
    length = ctx.text.input_ids.shape[1]
    with torch.enable_grad():
        text_embeds, traces = encode_text_rewritten(model, ids, eos, heads=1, layers=layers)
        extra = ctx.extra_embeds()
        scores = ctx.target.scores(
            image_embeds,
            text_embeds,
            ctx.handle.logit_scale.detach().to(text_embeds.dtype),
            None if extra is None else extra.to(text_embeds.dtype),
        )  # (B, K)
        maps = torch.zeros(*scores.shape, length, dtype=scores.dtype, device=scores.device)
        for k in range(scores.shape[1]):
            e = int(eos[k])
            lams = [
                official_lambda(t.q[k], t.k[k], e, slice(None), out_proj_for(layer, lambda_qk))
                for t, layer in zip(traces, recomputed)
            ]  # (context,) each: ALL positions
            for b in range(scores.shape[0]):
                grads = torch.autograd.grad(scores[b, k], [t.attn_out for t in traces], retain_graph=True)
                terms = [official_term(g[k, e], t.v[k].detach(), lam) for g, t, lam in zip(grads, traces, lams)]
                emap = F.relu(torch.stack(terms).sum(0))[1:e]  # (e-1,)
                maps[b, k, 1:e] = normalize_sum(emap)  # the official emap / emap.sum(), but 0 (not NaN) for 0 / 0
    return maps, scores.detach()


__all__ = [
    "image_maps",
    "text_maps",
    "image_embeds",
    "BlockTrace",
    "attention",
    "recompute_block",
    "interpolated_positions",
    "vision_tokens",
    "encode_image_rewritten",
    "encode_text_rewritten",
    "causal_mask",
]
