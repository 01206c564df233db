"""Pieces of math shared by the CLS-query methods (Grad-ECLIP, Attention-ECLIP).

Grad-ECLIP's spatial weight lambda has two choices the published code makes in more than one way; both
are explicit options here, the published definition the default:

- ``lambda_span``, the tokens the min-max normalisation runs over. Image side: the patch tokens (both
  published image codes). Text side: ``"context"`` (default, the published text code): ALL positions of
  the padded context, i.e. the text padded to the model's context length (77 for OpenAI CLIP) with id 0
  as ``clip.tokenize`` pads, under the causal mask only, so start, words, end and padding all take part
  in the min and the max; ``"inner"``: only the tokens strictly between start and end (faithclip's
  earlier rule). The map itself is kept on the tokens strictly between start and end either way.
- ``lambda_qk``, which q and k the cosine compares: ``"raw"`` (default; the paper, the image notebook and
  the text notebook): the ``q_proj`` / ``k_proj`` outputs; ``"out_proj"`` (the published evaluation script
  ``generate_emap.py``): both passed through the layer's ``out_proj`` (bias included) first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from faithclip.methods.context import Context, LayerCapture, MapResult

LAMBDA_SPANS = ("context", "inner")
LAMBDA_QK = ("raw", "out_proj")


def qk_lambda(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Grad-ECLIP's spatial weight, min-max normalised over ``support``.

    ``lambda_j = (c_j - min_S c) / (max_S c - min_S c)`` with ``c_j = cos(q_query, k_j)`` computed over the
    FULL width (all heads' channels together), ``S`` the support tokens. Outside ``S`` lambda is 0. When
    every cosine on ``S`` is equal the min-max is undefined; lambda is then 1 on ``S`` (no reweighting),
    never NaN.

    q, k: ``(C, T, D)``; positions: ``(C,)`` query index; support: ``(C, T)`` bool -> ``(C, T)``.
    """
    from faithclip.targets import accumulation_dtype

    q, k = q.to(accumulation_dtype(q.dtype)), k.to(accumulation_dtype(k.dtype))  # cosines in >= float32
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


def check_lambda_options(span: str, lambda_qk: str) -> None:
    from faithclip.errors import MethodError

    if span not in LAMBDA_SPANS:
        raise MethodError(f"lambda_span must be one of {LAMBDA_SPANS}, got {span!r}.")
    if lambda_qk not in LAMBDA_QK:
        raise MethodError(f"lambda_qk must be one of {LAMBDA_QK}, got {lambda_qk!r}.")


def layer_lambdas(
    ctx: "Context",
    captures: dict[int, "LayerCapture"],
    layer_indices: Sequence[int],
    span: str = "context",
    lambda_qk: str = "raw",
) -> list[torch.Tensor]:
    """``qk_lambda`` of each explained layer, broadcast to ``(B|1, K|1, T)`` (T: the explained input's tokens).

    q and k come from ``captures`` (the explained forward), except on the text side with
    ``span="context"``: there they come from a no-grad probed forward of the texts padded to the whole
    context (``Context.context_captures``), lambda is normalised over all its positions and then cut back
    to the explained input's ``T`` tokens (the map keeps only tokens before the end token, all inside ``T``).
    """
    check_lambda_options(span, lambda_qk)
    whole_context = ctx.side == "text" and span == "context"
    source = ctx.context_captures(layer_indices) if whole_context else captures
    out = []
    for index in layer_indices:
        q, k = (t.detach() for t in source[index].require("q", "k"))  # (C, T', D) each
        if lambda_qk == "out_proj":
            out_proj = ctx.output_projection(index)
            with torch.no_grad():
                q, k = out_proj(q), out_proj(k)
        support = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device) if whole_context else ctx.support_mask()
        lam = qk_lambda(q, k, ctx.query_positions, support)  # (C, T')
        out.append(ctx.pair(lam[:, : ctx.num_tokens]))
    return out


# The options of Grad-ECLIP and Attention-ECLIP and their published defaults: one set, since the two are
# the same map (docs/equivalence.md) and every option must mean the same in both.
ECLIP_DEFAULTS = {
    "layers": 1,
    "use_lambda": True,
    "relu": "per_layer (image) / after_sum (text)",
    "lambda_span": "context (text: the whole padded context; image: patches)",
    "lambda_qk": "raw",
}


def eclip_result(
    ctx: "Context", terms: list[torch.Tensor], relu: str, scores: torch.Tensor, explained: list[int], options: dict
) -> "MapResult":
    """The shared ending of Grad-ECLIP and Attention-ECLIP: combine the per-layer terms ``(B, K, T)``,
    keep the map's support, normalise text maps to sum 1 (not a signed ``relu="none"`` map, whose sum may be
    near zero: it stays raw)."""
    from faithclip.methods.context import MapResult

    per_token = ctx.token_map(combine_layers(terms, relu))
    if ctx.side == "text" and relu != "none":
        per_token = normalize_sum(per_token)
    return MapResult(maps=per_token.detach(), scores=scores.detach(), layer_indices=explained, options=options)
