"""An attention-pooling head's internals, from what the probe recorded (docs/equivalence.md, "SigLIP: the
attention-pooling head").

``torch.nn.MultiheadAttention`` computes q, k, v and the probabilities inside one functional call, where
no hook reaches them. They are linear algebra on the head's input ``x`` and its own parameters, so they are
computed here as VALUES (no graph), and checked against what the module itself produced in the model's
forward: the returned head-averaged probabilities and the output ``y``. With the learned query ``p``
(``Tq`` rows), ``W = in_proj_weight = [W_q; W_k; W_v]``, ``H`` heads of width ``d = D / H``:

    q = p W_q^T + b_q   (Tq, D)     k = x W_k^T + b_k,  v = x W_v^T + b_v   (T, D)
    A^h = softmax( q^h (k^h)^T / sqrt(d) )                                  (Tq, T) per head
    o_c = sum_j A^{h(c)}_j v_jc                                              (Tq, D) before out_proj
    y   = o W_o^T + b_o                                                      out_proj

The score's gradient reaches the head through ``y`` (captured on the graph), so ``dS/do = dS/dy W_o`` and,
by the chain rule, ``dS/dA^h_j = sum_{c in h} (dS/do)_c v_jc`` (``attention_gradient_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from faithclip.errors import ProbeError
from faithclip.models.families import PoolingAttention
from faithclip.numerics import rounding_rtol
from faithclip.targets import accumulation_dtype


@dataclass
class PoolingInternals:
    q: torch.Tensor  # (C, Tq, D)
    k: torch.Tensor  # (C, T, D)
    v: torch.Tensor  # (C, T, D)
    attn: torch.Tensor  # (C, H, Tq, T)
    attn_out: torch.Tensor  # (C, Tq, D), before out_proj
    output: torch.Tensor  # (C, Tq, D), out_proj(attn_out)


def check_supported(attention: torch.nn.MultiheadAttention) -> None:
    """The identity above holds for a batch-first ``MultiheadAttention`` with one fused input projection,
    no extra key/value biases, no zero attention and no active dropout."""
    if (
        getattr(attention, "in_proj_weight", None) is None
        or not attention.batch_first
        or attention.bias_k is not None
        or attention.add_zero_attn
        or (attention.training and attention.dropout > 0)
    ):
        raise ProbeError(
            "the attention-pooling head is not a batch-first MultiheadAttention with one fused in_proj "
            "and no bias_k/bias_v, zero attention or active dropout; faithclip cannot read it."
        )


def pooling_internals(x: torch.Tensor, pooling: PoolingAttention) -> PoolingInternals:
    """q, k, v, A, o and y of the head (values, no graph) from its input ``x`` ``(C, T, D)``."""
    attention = pooling.attention
    check_supported(attention)
    heads = pooling.heads
    with torch.no_grad():
        batch, tokens, width = x.shape
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)  # (D, D) each
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None,) * 3
        query = pooling.query.expand(batch, -1, -1)  # (C, Tq, D)
        q = torch.nn.functional.linear(query, w_q, b_q)  # (C, Tq, D)
        k = torch.nn.functional.linear(x, w_k, b_k)  # (C, T, D)
        v = torch.nn.functional.linear(x, w_v, b_v)  # (C, T, D)
        split = lambda t: t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2)  # (C, H, *, d)
        logits = split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5  # (C, H, Tq, T)
        attn = logits.softmax(dim=-1)
        attn_out = (attn @ split(v)).transpose(1, 2).reshape(batch, -1, width)  # (C, Tq, D)
        # as MultiheadAttention's own forward applies it (its weights, not a call of the out_proj module)
        output = torch.nn.functional.linear(attn_out, attention.out_proj.weight, attention.out_proj.bias)
    return PoolingInternals(q=q, k=k, v=v, attn=attn, attn_out=attn_out, output=output)


def check_agreement(internals: PoolingInternals, output: torch.Tensor, head_weights: torch.Tensor) -> None:
    """Raise unless the recomputed ``y`` and head-averaged A equal what the module itself produced."""
    for name, rebuilt, reference in (
        ("output", internals.output, output),
        ("head-averaged attention", internals.attn.mean(dim=1), head_weights),
    ):
        reference = reference.detach()
        tolerance = rounding_rtol(reference.dtype)  # two kernels for one computation (docs/testing.md)
        scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
        error = float((rebuilt.to(reference.dtype) - reference).abs().max() / scale)
        if not error <= tolerance:
            raise ProbeError(
                f"the attention-pooling head's {name} recomputed from its input and parameters differs "
                f"from the module's own by {error:.2e} (relative, tolerance {tolerance:g}); it is not the "
                "head faithclip reads."
            )


def attention_gradient_rows(
    output_grad: torch.Tensor, v: torch.Tensor, pooling: PoolingAttention, side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dS/do`` ``(B, K, D)`` and ``dS/dA^h_j`` ``(B, K, H, T)`` from ``dS/dy`` ``(B, K, D)`` at the
    query row and the head's values ``v`` ``(C, T, D)`` (C = B on the image side, K on the text side):
    ``dS/do = dS/dy W_o``, then ``dS/dA^h_j = sum_{c in h} (dS/do)_c v_jc``."""
    weight = pooling.attention.out_proj.weight  # (D, D): y = o W_o^T + b_o
    dtype = accumulation_dtype(v.dtype)
    output_grad = output_grad.to(dtype) @ weight.to(dtype)  # (B, K, D)
    inputs, tokens, width = v.shape
    heads = pooling.heads
    v_heads = v.to(dtype).reshape(inputs, tokens, heads, width // heads)  # (C, T, H, d)
    g_heads = output_grad.reshape(*output_grad.shape[:2], heads, width // heads)  # (B, K, H, d)
    pattern = "bkhd,bthd->bkht" if side == "image" else "bkhd,kthd->bkht"
    return output_grad, torch.einsum(pattern, g_heads, v_heads)  # (B, K, D), (B, K, H, T)
