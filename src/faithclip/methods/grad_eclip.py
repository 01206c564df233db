"""Grad-ECLIP (Zhao et al., "Gradient-based Visual Explanation for Transformer-based CLIP", ICML 2024),
computed on the ORIGINAL model: all heads, the model's own input.

At layer l, with o the attention output before ``out_proj`` (heads concatenated, width D), v the value
vectors (``v_proj`` output, width D), g = dS/do_q the gradient at the pooled query token q, and
lambda_j the min-max normalised cosine of q's query and token j's key (``common.qk_lambda``):

    term_l(j) = lambda_j * sum_c g_c v_jc          (c runs over all D channels)

Image (class-token query, patch tokens j): ``map = sum_l ReLU(term_l)`` over the last ``layers`` layers
(the official image notebook; ``relu='after_sum'`` is the alternative). Text (end-of-text query):
``map = ReLU(sum_l term_l)`` (the official text code), kept on tokens strictly between start and end and
normalised to sum 1. ``use_lambda=False`` drops lambda.

Lambda's two published choices are options (``common``): ``lambda_span`` -- on the text side the min-max
runs over the whole padded context (``"context"``, the published text code, default) or over the tokens
strictly between start and end (``"inner"``); ``lambda_qk`` -- raw q, k (``"raw"``, paper and notebooks,
default) or out_proj(q), out_proj(k) (``"out_proj"``, the published evaluation script).
"""

from __future__ import annotations

import torch

from faithclip.methods.common import ECLIP_DEFAULTS, default_relu, eclip_result, layer_lambdas
from faithclip.methods.context import Context, MapResult
from faithclip.registry import MethodSpec, register_method
from faithclip.targets import accumulation_dtype


def grad_eclip_terms(query_grad: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    """One layer's signed term: g ``(B, K, D)``, v ``(B, 1, T, D)`` (image) or ``(1, K, T, D)`` (text), lambda
    ``(B|1, K|1, T)`` -> ``(B, K, T)``. The channel sum is a contraction, never a ``(B, K, T, D)`` product,
    taken in at least float32 (a half-precision model's D products would otherwise be summed in bf16)."""
    dtype = accumulation_dtype(v.dtype)
    v, query_grad = v.to(dtype), query_grad.to(dtype)
    if v.shape[1] == 1:  # image side: one v per image, shared by its K prompts
        channel_sum = torch.einsum("btd,bkd->bkt", v[:, 0], query_grad)  # sum_c g_c v_jc: (B, K, T)
    else:  # text side: one v per text, shared by the B images
        channel_sum = torch.einsum("ktd,bkd->bkt", v[0], query_grad)
    return channel_sum if lam is None else lam * channel_sum


def grad_eclip(
    ctx: Context,
    layers: int = 1,
    use_lambda: bool = True,
    relu: str | None = None,
    lambda_span: str = "context",
    lambda_qk: str = "raw",
) -> MapResult:
    relu = relu or default_relu(ctx.side)
    explained = ctx.last_layers(layers)
    scores, caps, grads = ctx.pooled_query_gradients(explained, "attn_out", capture=("q", "k", "v", "attn_out"))
    lams = layer_lambdas(ctx, caps, explained, lambda_span, lambda_qk) if use_lambda else [None] * len(explained)
    terms = [
        grad_eclip_terms(query_grad, ctx.pair(caps[index].require("v")[0].detach()), lam)
        for index, query_grad, lam in zip(explained, grads, lams)
    ]
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
        name="grad_eclip",
        assumes_pooled_score=(
            "it reads the score's gradient at the class token's row of the last attention, which "
            "carries the whole score only when the score depends on the image through the class token "
            "(Grad-ECLIP's derivation)"
        ),
        families=("*",),  # reads the model through the family adapter only
        paper="Zhao et al., Gradient-based Visual Explanation for Transformer-based CLIP, ICML 2024",
        image=grad_eclip,
        text=grad_eclip,
        defaults=ECLIP_DEFAULTS,
        summary="ReLU(lambda_j * sum_c g_c v_jc), g = dS/d(attention output) at the pooled token",
    )
)
