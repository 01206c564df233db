"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

The residual connection is modelled as an identity added to the head-averaged attention, each row
renormalised to sum 1, and the layers are chained from ``start_layer`` to the last layer L:

    Abar_l = rownorm( (1 / H) * sum_h A_l^h + I )
    R      = Abar_L  Abar_{L-1} ... Abar_s
    map_j  = R[q, j]

with q the pooled query token (class token for images, end-of-text token for texts), on the patch
tokens (image) or the tokens strictly between start and end (text). Only the query's row of R is
needed, so it is computed as the row vector ``e_q^T Abar_L ... Abar_s`` (T x T work per layer instead of
T^3). Like raw attention, the map explains the forward, not the image-text score.

A tower that pools through an attention-pooling head (SigLIP's image tower): the head is the last layer L
and its query is its learned query, which is not one of the T tokens, and no residual adds it to the head's
output. There is no identity term to add, so the chain starts from the head's head-averaged attention row
(already summing to 1): ``r = mean_h A_L^h[query, :]``, then ``r Abar_{L-1} ... Abar_s`` through the
blocks (which keep their residual identity). ``start_layer=-1`` is the head's row alone.
"""

from __future__ import annotations

import torch

from faithclip.methods.context import Context, MapResult
from faithclip.probe import resolve_layers
from faithclip.registry import MethodSpec, register_method


def residual_attention(attention: torch.Tensor) -> torch.Tensor:
    """``Abar = rownorm(mean_h A + I)``: ``(C, H, T, T)`` -> ``(C, T, T)``."""
    mean_heads = attention.mean(dim=1)  # (C, T, T)
    eye = torch.eye(mean_heads.shape[-1], dtype=mean_heads.dtype, device=mean_heads.device)
    augmented = mean_heads + eye  # (C, T, T)
    return augmented / augmented.sum(dim=-1, keepdim=True)


def rollout_rows(attentions: list[torch.Tensor], positions: torch.Tensor, pooling_head: bool = False) -> torch.Tensor:
    """Query row of ``Abar_L ... Abar_s``: attentions of layers s..L in forward order, each ``(C, H, T, T)``,
    query positions ``(C,)`` -> ``(C, T)``. ``pooling_head``: layer L is an attention-pooling head
    ``(C, H, 1, T)`` whose head-averaged row starts the chain (no identity term)."""
    first = attentions[-1]
    row = torch.zeros(first.shape[0], first.shape[-1], dtype=first.dtype, device=first.device)  # (C, T)
    row[torch.arange(first.shape[0], device=first.device), positions] = 1
    if pooling_head:
        row, attentions = first.mean(dim=1)[:, 0], attentions[:-1]  # (C, T): the learned query's row
    for attention in reversed(attentions):  # e_q^T Abar_L, then times Abar_{L-1}, ...
        row = torch.einsum("ct,ctu->cu", row, residual_attention(attention))  # (C, T)
    return row


def rollout(ctx: Context, start_layer: int = 0) -> MapResult:
    (first,) = resolve_layers([start_layer], ctx.num_layers)  # negative counts from the end; range checked
    layer_indices = list(range(first, ctx.num_layers))
    scores, caps = ctx.probe_forward(layer_indices, capture=("attn",), grad_from=ctx.num_layers - 1)
    rows = rollout_rows(
        [caps[i].attn.detach() for i in layer_indices], ctx.query_positions, pooling_head=ctx.head_layer is not None
    )  # (C, T)
    per_pair = ctx.pair(rows).expand(ctx.num_images, ctx.num_texts, -1)  # (B, K, T)
    return MapResult(
        maps=ctx.token_map(per_pair),
        scores=scores.detach(),
        layer_indices=layer_indices,
        options={"start_layer": start_layer},
    )


register_method(
    MethodSpec(
        name="rollout",
        assumes_pooled_score=(
            "its map is the class token's rolled-out attention row, what the score reads only when it "
            "reads the class token alone"
        ),
        families=("*",),  # reads the model through the family adapter only
        paper="Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020",
        image=rollout,
        text=rollout,
        defaults={"start_layer": 0},
        summary="query row of prod_l rownorm(mean_h A_l + I), layers start_layer..last",
    )
)
