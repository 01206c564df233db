"""GAME: Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", ICCV 2021 (the CLIP notebook of hila-chefer/Transformer-MM-Explainability).

For the explained score S, relevance starts as the identity and every layer l from ``start_layer`` to
the last adds its gradient-weighted attention, propagated through the relevance so far:

    R_0    = I
    Abar_l = (1 / H) * sum_h ReLU( dS/dA_l^h  *  A_l^h )        (element-wise product)
    R      = R + Abar_l @ R                                      (l = start_layer, ..., L)
    map_j  = R[q, j]

with q the pooled query token (class token for images, end-of-text token for texts), kept on the patch
tokens (image) or the tokens strictly between start and end (text); raw, not normalised.

``start_layer=0`` (default) uses every layer, as the paper describes. The official CLIP code (and
Grad-ECLIP's comparison, which reuses it) sets ``start_layer=-1``: the last layer only, where the map
reduces to ``mean_h ReLU(dS/dA^h[q, j] * A^h[q, j])``: only the query rows are needed (and the context's
last-layer fast path applies on the image side). Over several layers, since
R = (I + Abar_L) ... (I + Abar_s), only the query row is propagated: ``r <- r + r @ Abar_l`` from the last
layer down.

At an attention-pooling head (SigLIP's image tower; the last layer) the query is the head's learned query,
not one of the T tokens: its ``e_q`` has no place in the map, so the head contributes
``mean_h ReLU(dS/dA^h[query, j] * A^h[query, j])`` alone and, over several layers, that row is propagated
through the blocks below as above. The head's ``dS/dA`` is the chain rule from its output
(``Context.attention_gradients``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faithclip.methods.context import Context, MapResult
from faithclip.probe import resolve_layers
from faithclip.registry import MethodSpec, register_method


def gradient_weighted_attention(attention: torch.Tensor, attention_grad: torch.Tensor) -> torch.Tensor:
    """``Abar = mean_h ReLU(grad * A)``: ``(B|1, K|1, H, T, T)``, ``(B, K, H, T, T)`` -> ``(B, K, T, T)``."""
    return F.relu(attention_grad * attention).mean(dim=2)


def game_rows(
    attentions: list[torch.Tensor], attention_grads: list[torch.Tensor], query: torch.Tensor, pooling_head: bool = False
) -> torch.Tensor:
    """Query row of ``(I + Abar_L) ... (I + Abar_s)``.

    ``attentions`` ``(B|1, K|1, H, T, T)`` and ``attention_grads`` ``(B, K, H, T, T)`` of layers s..L in
    forward order; ``query`` ``(B, K, T)`` one-hot rows of the pooled tokens -> ``(B, K, T)``.
    ``pooling_head``: layer L is an attention-pooling head (``(.., H, 1, T)``), whose row starts the chain.
    """
    row = query
    if pooling_head:
        row = row + gradient_weighted_attention(attentions[-1], attention_grads[-1])[:, :, 0]  # (B, K, T)
        attentions, attention_grads = attentions[:-1], attention_grads[:-1]
    for attention, attention_grad in zip(reversed(attentions), reversed(attention_grads)):
        weighted = gradient_weighted_attention(attention, attention_grad)  # (B, K, T, T)
        row = row + torch.einsum("bkt,bktu->bku", row, weighted)  # r (I + Abar_l): (B, K, T)
    return row


def game_last_layer_row(
    attention_row: torch.Tensor, attention_grad_row: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """One explained layer: ``R[q] = e_q + mean_h ReLU(G[q] * A[q])``, which needs only the query rows.

    ``attention_row`` ``(B|1, K|1, H, T)``, ``attention_grad_row`` ``(B, K, H, T)``, ``query`` ``(B, K, T)``.
    """
    return query + F.relu(attention_grad_row * attention_row).mean(dim=2)  # (B, K, T)


def game(ctx: Context, start_layer: int = 0) -> MapResult:
    (first,) = resolve_layers([start_layer], ctx.num_layers)
    layer_indices = list(range(first, ctx.num_layers))
    positions = ctx.query_positions
    if len(layer_indices) == 1:  # only the query rows matter; the context may take its last-layer fast path
        scores, caps, (grad_rows,) = ctx.pooled_query_gradients(layer_indices, "attn", capture=("attn",))
        attention = caps[layer_indices[0]].attn.detach()  # (C, H, T, T)
        tokens = attention.shape[-1]
        attention_rows = attention[torch.arange(attention.shape[0], device=attention.device), :, positions]  # (C, H, T)
        query = ctx.pair(ctx.query_one_hot(layer_indices[0], tokens).to(attention.dtype)).expand(
            ctx.num_images, ctx.num_texts, -1
        )
        rows = game_last_layer_row(ctx.pair(attention_rows), grad_rows, query)
    else:
        scores, caps = ctx.probe_forward(layer_indices, capture=("attn",))
        attentions = [caps[i].attn for i in layer_indices]
        attention_grads = ctx.attention_gradients(scores, caps, layer_indices)  # per layer (B, K, H, Tq, T)
        one_hot = ctx.query_one_hot(layer_indices[-1], attentions[0].shape[-1]).to(attentions[0].dtype)  # (C, T)
        query = ctx.pair(one_hot).expand(ctx.num_images, ctx.num_texts, -1)  # (B, K, T)
        rows = game_rows(
            [ctx.pair(a.detach()) for a in attentions], attention_grads, query, pooling_head=ctx.head_layer is not None
        )
    return MapResult(
        maps=ctx.token_map(rows).detach(),
        scores=scores.detach(),
        layer_indices=layer_indices,
        options={"start_layer": start_layer},
    )


register_method(
    MethodSpec(
        name="game",
        assumes_pooled_score=(
            "its map is the class token's row of the relevance propagated through the image "
            "self-attention (Chefer et al.'s rule for a score read from the class token; a fused "
            "score's relevance enters through the text encoder's cross-attention, which it does not "
            "propagate)"
        ),
        families=("*",),  # reads the model through the family adapter only
        paper="Chefer, Gur & Wolf, Generic Attention-model Explainability for Interpreting Bi-Modal and "
        "Encoder-Decoder Transformers, ICCV 2021",
        image=game,
        text=game,
        defaults={"start_layer": 0},
        summary="R += mean_h ReLU(dS/dA * A) @ R from start_layer to the last layer; map = R[query, support]",
    )
)
