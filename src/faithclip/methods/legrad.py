"""LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, "LeGrad: An Explainability Method for
Vision Transformers via Feature Formation Sensitivity", arXiv 2404.03214, 2024), with the choices of
the official CLIP code (WalBouss/LeGrad, ``LeWrapper.compute_legrad_clip``, open_clip <= 2.23; read for
its behaviour, not copied).

Every layer l from ``start_layer`` to the last gets its own score: the layer's output tokens z^l
``(T, D)`` are averaged over ALL tokens (class token included), passed through the model's own final
post-layernorm and projection, and scored against the text with the explained target (cosine by
default, as the official code):

    e^l     = proj( LN_post( (1 / T) * sum_t z^l_t ) )
    s^l     = target(e^l, text)
    G^l     = ReLU( ds^l / dA^l )                             (A^l: layer l's attention, (H, T, T))
    m^l_j   = (1 / (H T)) * sum_h sum_i G^l[h, i, j]           (mean over heads and query rows)
    map     = minmax( sum_l m^l )  on the patch tokens j       (``min_max=True``)

``pooling='tokens'`` is the variant described in words in the paper: every token goes through LN_post
and the projection on its own, and s^l sums the per-token scores of the patch tokens.
Default ``start_layer=-2`` (the last two layers) is the wrapper's default (``LeWrapper(layer_index=-2)``).
The official code min-max normalises the map after bilinear upsampling to pixels; here the grid map is
normalised (values at the patch centres; upsampling is an explicit later step). A constant map is
returned as zeros instead of NaN. ``scores`` holds the last layer's s^L: LeGrad explains these
token-averaged scores, which are NOT the model's class-token score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faithclip.errors import MethodError
from faithclip.mapmath import minmax
from faithclip.methods.context import Context, MapResult
from faithclip.probe import resolve_layers
from faithclip.registry import MethodSpec, register_method

POOLINGS = ("mean", "tokens")


def legrad_layer_map(attention_grad: torch.Tensor) -> torch.Tensor:
    """``mean_{h, i} ReLU(G[h, i, j])``: ``(..., H, T, T)`` -> ``(..., T)``."""
    return F.relu(attention_grad).mean(dim=-3).mean(dim=-2)  # heads, then query rows


def layer_scores(ctx: Context, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """The score of one layer's output tokens ``(B, T, D)`` against the K texts -> ``(B, K)``."""
    model = ctx.handle.model
    text_embeds = ctx.fixed_text_embeds()  # (K, E)
    if pooling == "mean":
        return ctx.score(ctx.family.token_head(model, tokens.mean(dim=1)), text_embeds)  # (B, K)
    per_token = ctx.family.token_head(model, tokens)  # (B, T, E)
    batch, length = per_token.shape[:2]
    token_scores = ctx.score(per_token.flatten(0, 1), text_embeds)  # (B*T, K)
    prefix = ctx.family.prefix_tokens(model)  # class (and distillation) tokens before the patches
    return token_scores.reshape(batch, length, -1)[:, prefix:].sum(dim=1)  # patch tokens: (B, K)


def legrad(ctx: Context, start_layer: int = -2, pooling: str = "mean", min_max_normalize: bool = True) -> MapResult:
    if ctx.side != "image":
        raise MethodError("legrad explains the image side only; use faithclip.explain, not explain_text.")
    if pooling not in POOLINGS:
        raise MethodError(f"legrad: pooling must be one of {POOLINGS}, got {pooling!r}.")
    blocks = len(ctx.encoder_layers())  # LeGrad sums over blocks: an attention-pooling head (SigLIP) is none
    (first,) = resolve_layers([start_layer], blocks)
    layer_indices = list(range(first, blocks))
    _, caps = ctx.probe_forward(layer_indices, capture=("attn", "hidden_out"))
    total = None
    for index in layer_indices:
        attention, tokens = caps[index].require("attn", "hidden_out")
        scores = layer_scores(ctx, tokens, pooling)  # s^l: (B, K)
        (per_token,) = ctx.grads(scores, [attention], reduce=legrad_layer_map)  # (B, K, T)
        total = per_token if total is None else total + per_token
    maps = ctx.token_map(total)  # (B, K, gh, gw)
    if min_max_normalize:
        maps = minmax(maps, dim=(-2, -1))  # each (gh, gw) map; a constant map becomes zeros
    return MapResult(
        maps=maps.detach(),
        scores=scores.detach(),
        layer_indices=layer_indices,
        options={"start_layer": start_layer, "pooling": pooling, "min_max_normalize": min_max_normalize},
    )


register_method(
    MethodSpec(
        name="legrad",
        assumes_pooled_score="it scores token means through the pooled token's ITC head, not through the ITM head",
        families=("*",),  # the family's per-token head and attention probe
        paper="Bousselham et al., LeGrad: An Explainability Method for Vision Transformers via Feature "
        "Formation Sensitivity, arXiv 2404.03214, 2024",
        image=legrad,
        # LeGrad differentiates its own per-layer scores of token-averaged intermediate features passed through
        # the final head: a forward the model never runs, whose score is not the model's (P1 fails by design).
        modifies_model=True,
        defaults={"start_layer": -2, "pooling": "mean", "min_max_normalize": True},
        summary="minmax(sum_l mean_{h,i} ReLU(ds^l/dA^l)), s^l = target(proj(LN_post(mean_t z^l_t)), text)",
    )
)
