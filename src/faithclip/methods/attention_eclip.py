"""Attention-ECLIP ("Debunking Grad-ECLIP", arXiv 2605.12952): Grad-ECLIP from the attention gradient alone.

For the explained score S, at layer l with attention probabilities A^h (one matrix per head h) and the
pooled query token q (class token for images, end-of-text token for texts):

    map_j = ReLU( lambda_j * sum_h dS/dA^h[q, j] )

with lambda_j Grad-ECLIP's min-max normalised query-key cosine (``common.qk_lambda``). By the chain rule
dS/dA^h[q, j] = sum_{c in h} g_c v_jc (g = dS/do_q, o the attention output before out_proj), so this is
exactly Grad-ECLIP (docs/equivalence.md). Several layers combine like Grad-ECLIP's (``relu`` option);
text maps keep the tokens strictly between start and end and are normalised to sum 1. Lambda takes the
same options as Grad-ECLIP's (``lambda_span``, ``lambda_qk``; defaults the published definition).
"""

from __future__ import annotations

import torch

from faithclip.methods.common import ECLIP_DEFAULTS, default_relu, eclip_result, layer_lambdas
from faithclip.methods.context import Context, MapResult
from faithclip.registry import MethodSpec, register_method


def attention_eclip_terms(attn_grad_rows: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    """One layer's signed term: ``(B, K, H, T)`` query-row gradients, ``(B|1, K|1, T)`` lambda -> ``(B, K, T)``."""
    summed = attn_grad_rows.sum(dim=2)  # sum over heads: (B, K, T)
    return summed if lam is None else lam * summed


def attention_eclip(
    ctx: Context,
    layers: int = 1,
    use_lambda: bool = True,
    relu: str | None = None,
    lambda_span: str = "context",
    lambda_qk: str = "raw",
) -> MapResult:
    relu = relu or default_relu(ctx.side)
    explained = ctx.last_layers(layers)
    scores, caps, rows = ctx.pooled_query_gradients(explained, "attn", capture=("q", "k", "attn"))
    lams = layer_lambdas(ctx, caps, explained, lambda_span, lambda_qk) if use_lambda else [None] * len(explained)
    terms = [attention_eclip_terms(row, lam) for row, lam in zip(rows, lams)]
    options = {
        "layers": layers,
        "use_lambda": use_lambda,
        "relu": relu,
        "lambda_span": lambda_span,
        "lambda_qk": lambda_qk,
    }
    return eclip_result(ctx, terms, relu, scores, explained, options)


register_method(
    MethodSpec(
        name="attention_eclip",
        assumes_pooled_score=(
            "it reads dS/dA at the class token's row of the last attention, which carries the whole "
            "score only when the score depends on the image through the class token (Grad-ECLIP's "
            "derivation)"
        ),
        families=("*",),  # reads the model through the family adapter only
        paper="Debunking Grad-ECLIP (arXiv 2605.12952)",
        image=attention_eclip,
        text=attention_eclip,
        defaults=ECLIP_DEFAULTS,
        summary="ReLU(lambda_j * sum_h dS/dA^h[query, j]) on the original model",
    )
)
