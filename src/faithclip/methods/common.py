"""Pieces of math shared by the CLS-query methods (Grad-ECLIP, Attention-ECLIP)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from faithclip.methods.context import Context, LayerCapture, MapResult


def qk_lambda(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Grad-ECLIP's spatial weight, min-max normalised over the map's support.

    ``lambda_j = (c_j - min_S c) / (max_S c - min_S c)`` with ``c_j = cos(q_query, k_j)`` computed over the
    FULL width (all heads' channels together, the raw ``q_proj`` / ``k_proj`` outputs), ``S`` the support
    tokens (patch tokens for images; tokens strictly between start and end for texts). Outside ``S``
    lambda is 0. When every cosine on ``S`` is equal the min-max is undefined; lambda is then 1 on ``S``
    (no reweighting), never NaN.

    q, k: ``(C, T, D)``; positions: ``(C,)`` query index; support: ``(C, T)`` bool -> ``(C, T)``.
    """
    index = torch.arange(q.shape[0], device=q.device)
    query = F.normalize(q[index, positions], dim=-1)  # (C, D)
    cosine = (F.normalize(k, dim=-1) * query[:, None, :]).sum(-1)  # (C, T)
    inf = torch.tensor(float("inf"), dtype=cosine.dtype, device=cosine.device)
    low = torch.where(support, cosine, inf).amin(dim=-1, keepdim=True)  # (C, 1)
    high = torch.where(support, cosine, -inf).amax(dim=-1, keepdim=True)  # (C, 1)
    span = high - low
    flat = span <= 0
    scaled = (cosine - low) / torch.where(flat, torch.ones_like(span), span)
    scaled = torch.where(flat, torch.ones_like(scaled), scaled)
    return torch.where(support, scaled, torch.zeros_like(scaled))


def combine_layers(terms: list[torch.Tensor], relu: str) -> torch.Tensor:
    """Combine per-layer maps: ``per_layer`` = sum_l ReLU(term_l); ``after_sum`` = ReLU(sum_l term_l);
    ``none`` = sum_l term_l (the signed map, for analysis; not the published method)."""
    if relu == "per_layer":
        return torch.stack([F.relu(term) for term in terms]).sum(0)
    if relu == "after_sum":
        return F.relu(torch.stack(terms).sum(0))
    if relu == "none":
        return torch.stack(terms).sum(0)
    raise ValueError(f"relu must be 'per_layer', 'after_sum' or 'none', got {relu!r}")


def normalize_sum(per_token: torch.Tensor) -> torch.Tensor:
    """Scale ``(..., L)`` non-negative values to sum 1 over the last axis; an all-zero row stays zero."""
    total = per_token.sum(-1, keepdim=True)
    return torch.where(total > 0, per_token / torch.where(total > 0, total, torch.ones_like(total)), per_token)


def default_relu(side: str) -> str:
    """The official ReLU placement: per layer for images (image notebook), after the sum for texts (text code)."""
    return "per_layer" if side == "image" else "after_sum"


def layer_lambda(ctx: "Context", capture: "LayerCapture") -> torch.Tensor:
    """``qk_lambda`` of one captured layer, broadcast to ``(B|1, K|1, T)``."""
    q, k = (t.detach() for t in capture.require("q", "k"))
    return ctx.pair(qk_lambda(q, k, ctx.query_positions, ctx.support_mask()))


def eclip_result(ctx: "Context", terms: list[torch.Tensor], relu: str, scores: torch.Tensor, explained: list[int],
                 options: dict) -> "MapResult":
    """The shared ending of Grad-ECLIP and Attention-ECLIP: combine the per-layer terms ``(B, K, T)``,
    keep the map's support, normalise text maps to sum 1."""
    from faithclip.methods.context import MapResult

    per_token = ctx.token_map(combine_layers(terms, relu))
    if ctx.side == "text":
        per_token = normalize_sum(per_token)
    return MapResult(maps=per_token.detach(), scores=scores.detach(), layers=explained, options=options)
