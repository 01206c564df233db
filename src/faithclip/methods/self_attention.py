"""Raw self-attention of the pooled token: the baseline every attention-based explanation starts from.

No paper: this is the map a reader gets by looking at one attention matrix. At layer l, with attention
probabilities A^h (one ``T x T`` matrix per head h, rows are queries) and the pooled query token q (the
class token for images, the end-of-text token for texts):

    map_j = (1 / H) * sum_h A^h[q, j]

over the patch tokens j (image) or the tokens strictly between start and end (text). At an attention-pooling
head (SigLIP's image tower) the query is the head's learned query: its only attention row. The map does not
depend on the text for an image (nor on the image for a text): it explains the forward, not the score.
"""

from __future__ import annotations

import torch

from faithclip.methods.context import Context, MapResult
from faithclip.probe import resolve_layers
from faithclip.registry import MethodSpec, register_method


def query_attention(attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention row of each input's query: ``(C, H, T, T)``, ``(C,)`` -> ``(C, T)``."""
    mean_heads = attention.mean(dim=1)  # (C, T, T)
    index = torch.arange(attention.shape[0], device=attention.device)
    return mean_heads[index, positions]  # (C, T)


def self_attention(ctx: Context, layer: int = -1) -> MapResult:
    (index,) = resolve_layers([layer], ctx.num_layers)
    ctx.check_query_layers([index], f"self_attention at layer={layer}")
    scores, caps = ctx.probe_forward([index], capture=("attn",))
    rows = query_attention(caps[index].attn.detach(), ctx.query_positions)  # (C, T)
    per_pair = ctx.pair(rows).expand(ctx.num_images, ctx.num_texts, -1)  # (B, K, T)
    return MapResult(
        maps=ctx.token_map(per_pair), scores=scores.detach(), layer_indices=[index], options={"layer": layer}
    )


register_method(
    MethodSpec(
        name="self_attention",
        assumes_pooled_score=(
            "its map is the class token's attention row, what the score reads only when it reads the class token alone"
        ),
        families=("*",),  # reads the model through the family adapter only
        paper="none (raw attention of the pooled token; the baseline of Abnar & Zuidema 2020)",
        image=self_attention,
        text=self_attention,
        defaults={"layer": -1},
        summary="mean over heads of the pooled query's attention row A[query, j] at one layer",
    )
)
