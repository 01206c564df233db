"""The published Grad-ECLIP formula (github.com/Cyang-Zhao/Grad-Eclip), shared by every family's published
pipeline (``rewrite`` for CLIP, ``blip``, ``vit``): lambda, one layer's term, the map loop over the rewritten
layers' traces, and the map loop of a forward that returns embeddings (CLIP's and BLIP's rewrites).

    lambda_j = minmax_{j in patches} cos(q~_cls, k~_j)       (q~, k~: raw, or through out_proj)
    map_j    = sum_l ReLU( lambda_j * sum_c g_c v_jc )       g = dS/do at the class token
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from faithclip.errors import MethodError
from faithclip.mapmath import minmax
from faithclip.methods.common import LAMBDA_QK


def official_lambda(q: torch.Tensor, k: torch.Tensor, query: int, keys: slice, out_proj: Any | None) -> torch.Tensor:
    """Min-max normalised cosine of the query token's q and the keys' k: q, k ``(T, D)`` -> ``(len(keys),)``.

    ``out_proj`` given: both pass through it first (bias included), as the evaluation script's ``q_out, k_out``.
    """
    with torch.no_grad():
        if out_proj is not None:
            q, k = out_proj(q), out_proj(k)  # (T, D) each
        query_vector = F.normalize(q[query], dim=-1)  # (D,)
        cosine = (F.normalize(k[keys], dim=-1) * query_vector).sum(-1)  # (T',)
        # the official code has no guard (a constant row gives NaN); a constant row gives 1 here (no
        # reweighting), as faithful Grad-ECLIP
        return minmax(cosine, dim=-1, constant=1.0)


def official_term(query_grad: torch.Tensor, v: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """One layer's signed term ``lambda_j * sum_c g_c v_jc``: g ``(D,)``, v ``(T', D)``, lambda ``(T',)`` -> ``(T',)``."""
    return (query_grad * v * lam[:, None]).sum(-1)


def out_proj_for(trace_layer: Any, lambda_qk: str, family: Any = None) -> Any | None:
    """The layer's output projection when lambda reads q, k through it (``lambda_qk="out_proj"``), else ``None``."""
    if lambda_qk not in LAMBDA_QK:
        raise MethodError(f"lambda_qk must be one of {LAMBDA_QK}, got {lambda_qk!r}.")
    if lambda_qk != "out_proj":
        return None
    return family.attention(trace_layer).out if family is not None else trace_layer.self_attn.out_proj


def official_image_maps(
    scores: torch.Tensor, traces: list, lams: list[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """The published image map of each score ``(K,)``: ``sum_l ReLU(lambda_l * sum_c g_c v_jc)`` over the
    rewritten layers' traces (``attn_out``, ``v`` of the class token's forward), on the patch grid: ``(K, gh, gw)``."""
    maps = []
    for k in range(scores.shape[0]):
        grads = torch.autograd.grad(scores[k], [t.attn_out for t in traces], retain_graph=True)
        terms = [official_term(g[0, 0], t.v[0, 1:].detach(), lam) for g, t, lam in zip(grads, traces, lams)]
        maps.append(torch.stack([F.relu(term) for term in terms]).sum(0).reshape(grid))  # (gh, gw)
    return torch.stack(maps).detach()


def embedding_image_maps(
    ctx: Any,
    pixels: torch.Tensor,
    layers: int,
    lambda_qk: str,
    model: Any | None,
    heads: int | None,
    encode: Callable[..., tuple[torch.Tensor, list, tuple[int, int]]],
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Official image maps of ONE input ``pixels (1, 3, H, W)`` against the context's K texts, through a rewritten
    forward ``encode(model, pixels, heads=, layers=) -> (embeddings, traces, grid)`` whose embeddings the
    context's target scores (CLIP's and BLIP's pipelines). Returns maps ``(K, gh, gw)``, the rewritten scores
    ``(K,)`` and the grid. ``heads=None`` applies the same formula to the model's own heads (the audit's arms)."""
    model = ctx.handle.model if model is None else model
    blocks = ctx.family.blocks(model, "vision")
    recomputed = list(blocks[len(blocks) - layers :])
    text_embeds = ctx.fixed_text_embeds().to(pixels.dtype)
    with torch.enable_grad():
        embeds, traces, grid = encode(model, pixels, heads=heads, layers=layers)
        scores = ctx.target.scores(
            embeds,
            text_embeds,
            ctx.handle.logit_scale.detach().to(embeds.dtype),
            None if ctx.extra_embeds() is None else ctx.extra_embeds().to(embeds.dtype),
        )[0]
        lams = [
            official_lambda(t.q[0], t.k[0], 0, slice(1, None), out_proj_for(layer, lambda_qk, ctx.family))
            for t, layer in zip(traces, recomputed)
        ]  # (T-1,) each
        maps = official_image_maps(scores, traces, lams, grid)
    return maps, scores.detach(), grid


__all__ = ["official_lambda", "official_term", "out_proj_for", "official_image_maps", "embedding_image_maps"]
