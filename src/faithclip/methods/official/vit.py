"""The published ViT adaptation of Grad-ECLIP (``gradeclip_adaptation_vit.ipynb`` in
github.com/Cyang-Zhao/Grad-Eclip), written out from its formula so that it can be measured.

Facts of the notebook (transformers' ``ViTForImageClassification``, google/vit-base-patch16-224):

- the prediction comes from the image processor's input (224 x 224); the explained input is the whole
  image resized (bicubic) so that each side is the nearest multiple of the patch, no short-side cap,
  normalised with the processor's mean and std, embedded by the model's own embeddings with
  ``interpolate_pos_encoding=True``;
- every block but the last is the model's own; the last is recomputed with ONE head over the full width
  D, its logits still scaled by the model's per-head ``1 / sqrt(D / H)``:

      A = softmax(q k^T / sqrt(D / H)),   o = A v

- the attention's residual is the block's LayerNormed input, not the input itself (the notebook
  overwrites x with ``layernorm_before(x)`` before adding it back):

      h = LN_1(x) + W_o o + b_o,   out = h + MLP(LN_2(h))

  (``residual="input"`` uses the model's own residual ``x``, to separate the two departures);
- the score is the class logit ``classifier(LN(out)[cls])`` of the rewritten forward; lambda is the
  min-max (over the patches) of ``cos(q_cls, k_j)`` on the raw q, k; the map is
  ``ReLU(sum_c g_c v_jc lambda_j)`` with g = dS/do at the class token.

``heads=None`` with ``residual="input"`` is the model's own forward (tested): the ablation's control arm.
"""

from __future__ import annotations

from typing import Any

import torch

from faithclip.errors import MethodError
from faithclip.methods.official.formula import official_image_maps, official_lambda
from faithclip.methods.official.rewrite import BlockTrace

RESIDUALS = ("normalized", "input")


def scaled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float,
    softmax_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``heads`` heads of width ``D / heads``, logits times ``scale``: q, k, v ``(B, T, D)`` -> the output
    ``(B, T, D)`` (heads concatenated, before o_proj) and the probabilities ``(B, heads, T, T)``. The softmax is
    taken in ``softmax_dtype`` (``None``: q's; transformers' ViT takes it in float32) and cast back."""
    batch, tokens, width = q.shape
    split = (batch, tokens, heads, width // heads)
    qh, kh, vh = (t.reshape(split).transpose(1, 2) for t in (q, k, v))  # (B, h, T, D/h) each
    probs = ((qh @ kh.transpose(-1, -2)) * scale).softmax(dim=-1, dtype=softmax_dtype).to(q.dtype)  # (B, h, T, T)
    return (probs @ vh).transpose(1, 2).reshape(batch, tokens, width), probs


def recompute_block(
    layer: Any, hidden: torch.Tensor, heads: int | None = 1, residual: str = "normalized"
) -> tuple[torch.Tensor, BlockTrace]:
    """One ViT block from its own weights with ``heads`` heads (``None``: the model's), scaled by the
    model's per-head ``scaling``, with the notebook's residual (``"normalized"``) or the model's (``"input"``)."""
    if residual not in RESIDUALS:
        raise MethodError(f"residual must be one of {RESIDUALS}, got {residual!r}.")
    attention = layer.attention
    own = heads is None  # the model's heads: its own float32 softmax too; the notebook's: the model's dtype
    heads = int(attention.num_attention_heads) if own else heads
    normed = layer.layernorm_before(hidden)  # (B, T, D)
    q, k, v = attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)
    attn_out, probs = scaled_attention(q, k, v, heads, float(attention.scaling), torch.float32 if own else None)
    mid = (normed if residual == "normalized" else hidden) + attention.o_proj(attn_out)  # (B, T, D)
    out = mid + layer.mlp(layer.layernorm_after(mid))
    return out, BlockTrace(q=q, k=k, v=v, attn=probs, attn_out=attn_out, hidden_in=hidden)


def encode_image_rewritten(
    model: Any, pixels: torch.Tensor, *, heads: int | None = 1, layers: int = 1, residual: str = "normalized"
) -> tuple[torch.Tensor, list[BlockTrace], tuple[int, int]]:
    """Class-token features ``(B, D)`` (final LayerNorm applied) of the rewritten forward on pixels of any
    size divisible by the patch, the traces of the recomputed blocks and the patch grid."""
    backbone = model.vit
    blocks = backbone.layers
    if not 1 <= layers <= len(blocks):
        raise MethodError(f"layers must be between 1 and {len(blocks)}, got {layers}.")
    patch = int(model.config.patch_size)
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    hidden = backbone.embeddings(pixels.to(backbone.embeddings.cls_token.dtype), interpolate_pos_encoding=True)
    for layer in blocks[: len(blocks) - layers]:
        hidden = layer(hidden, None)
    traces = []
    for layer in blocks[len(blocks) - layers :]:
        hidden, trace = recompute_block(layer, hidden, heads, residual)
        traces.append(trace)
    return backbone.layernorm(hidden)[:, 0], traces, grid


def image_maps(
    ctx: Any,
    pixels: torch.Tensor,
    layers: int,
    lambda_qk: str,
    model: Any | None = None,
    heads: int | None = 1,
    residual: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The notebook's maps of ONE input ``pixels (1, 3, H, W)`` for the context's K classes: maps
    ``(K, gh, gw)``, the rewritten scores ``(K,)`` and the grid (``grad_eclip_official.image_maps``'s contract).
    ``residual=None``: the notebook's when the block is rewritten (``heads`` given), the model's for
    ``heads=None`` (the audit's arms without the rewrite)."""
    residual = residual or ("input" if heads is None else "normalized")
    model = ctx.handle.model if model is None else model
    recomputed = list(model.vit.layers[len(model.vit.layers) - layers :])
    text_embeds = ctx.fixed_text_embeds()
    with torch.enable_grad():
        features, traces, grid = encode_image_rewritten(model, pixels, heads=heads, layers=layers, residual=residual)
        scores = ctx.family.score(ctx.target, features, text_embeds, model, ctx.extra_embeds())[0]  # (K,)
        lams = [
            official_lambda(
                t.q[0], t.k[0], 0, slice(1, None), layer.attention.o_proj if lambda_qk == "out_proj" else None
            )
            for t, layer in zip(traces, recomputed)
        ]  # (T-1,) each
        maps = official_image_maps(scores, traces, lams, grid)
    return maps, scores.detach(), grid


def image_embeds(model: Any, pixels: torch.Tensor, heads: int | None) -> torch.Tensor:
    """The class-token features of the notebook's forward (``heads=1``: its rewrite with its LayerNormed
    residual; ``None``: the model's own heads and residual), before the classifier (the audit's arms)."""
    return encode_image_rewritten(
        model, pixels, heads=heads, layers=1, residual="normalized" if heads == 1 else "input"
    )[0]


__all__ = ["RESIDUALS", "scaled_attention", "recompute_block", "encode_image_rewritten", "image_maps", "image_embeds"]
