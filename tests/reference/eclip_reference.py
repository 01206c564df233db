"""Grad-ECLIP and Attention-ECLIP for ONE image-text pair, written slowly from their formulas: test oracles.

Written from the definitions (Zhao et al., ICML 2024, Eq. for the channel-weighted value map with the
query-key cosine weight; "Debunking Grad-ECLIP", arXiv 2605.12952, for the attention-gradient form), on
the independent hand-written forward of ``clip_manual`` (never faithclip's probe), one score, explicit
loops over tokens and channels:

    c_j      = cos(q[query], k[j])                      q, k the full-width projections (all heads)
    lambda_j = (c_j - min_S c) / (max_S c - min_S c)     S the normalisation span; 1 on S if c is flat on S
    Grad-ECLIP       term_j = lambda_j * sum_c (dS/do[query])_c * v[j]_c
    Attention-ECLIP  term_j = lambda_j * sum_h dS/dA_h[query, j]

Image: the query is the class token, S and the map are the patch tokens, the map is sum_l ReLU(term_l).
Text: the query is the end token e, the map is ReLU(sum_l term_l) on tokens 1..e-1, scaled to sum 1. The
span S is either the whole padded context (``span="context"``: the text padded with id 0 to the model's
context length and run under the causal mask alone) or
the tokens 1..e-1 (``span="inner"``); the score and its gradients come from the text's own forward. ``qk="out_proj"`` passes q and k through the layer's output
projection (with its bias) before the cosine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.clip_manual import text_forward, vision_forward


def cosine_to(vectors: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``(T, D)`` and ``(D,)`` -> ``(T,)``: cosine of every row with the query, one row at a time."""
    values = [torch.dot(row, query) / (row.norm() * query.norm()) for row in vectors]
    return torch.stack(values)


def rescale(values: torch.Tensor, span: list[int]) -> torch.Tensor:
    """Min-max of ``values`` over the indices ``span``, zero elsewhere; a flat span gives 1 on it."""
    chosen = values[span]
    low, high = chosen.min(), chosen.max()
    weights = torch.zeros_like(values)
    for index in span:
        weights[index] = 1.0 if high == low else (values[index] - low) / (high - low)
    return weights


def _projected(layer, q: torch.Tensor, k: torch.Tensor, qk: str) -> tuple[torch.Tensor, torch.Tensor]:
    if qk == "raw":
        return q, k
    project = layer.self_attn.out_proj
    return project(q), project(k)


def _term(method: str, score: torch.Tensor, inside: dict, query: int) -> torch.Tensor:
    """``(T,)``: the unweighted term of every token for the query token, one layer."""
    if method == "grad_eclip":
        gradient = torch.autograd.grad(score, inside["attn_out"], retain_graph=True)[0][0]  # (T, D)
        values = inside["v"][0]  # (T, D)
        return torch.stack([(gradient[query] * values[j]).sum() for j in range(values.shape[0])])
    gradient = torch.autograd.grad(score, inside["attn"], retain_graph=True)[0][0]  # (H, T, T)
    return torch.stack([gradient[:, query, j].sum() for j in range(gradient.shape[-1])])


def image_maps(model, pixels, text_embed, method, n_layers=1, with_lambda=True, relu="per_layer", qk="raw"):
    """One image ``(1, 3, H, W)``, one text embedding ``(E,)`` -> the ``(gh*gw,)`` map and the score."""
    embed, internals = vision_forward(model, pixels)
    score = F.cosine_similarity(embed[0], text_embed, dim=0)
    blocks = model.vision_model.encoder.layers
    first = len(internals) - n_layers
    terms = []
    for offset, inside in enumerate(internals[first:]):
        q, k = _projected(blocks[first + offset], inside["q"][0], inside["k"][0], qk)
        patches = list(range(1, k.shape[0]))
        weight = rescale(cosine_to(k, q[0]), patches) if with_lambda else torch.ones(k.shape[0], dtype=k.dtype)
        terms.append((weight * _term(method, score, inside, 0))[1:])
    if relu == "per_layer":
        return sum(F.relu(t) for t in terms), score
    return F.relu(sum(terms)), score


def text_maps(model, ids, eos, image_embed, method, n_layers=1, with_lambda=True, span="context", qk="raw"):
    """One text ``(1, L)`` ending at ``eos``, one image embedding ``(E,)`` -> the ``(L,)`` map and the score.

    The score and its gradients come from the forward of ``ids`` as given. With ``span="context"`` the
    cosines of lambda come from a second forward of the same words laid out as ``clip.tokenize`` does
    (then zeros up to the model's context length); a causal model's end token is the same in both.
    """
    length = ids.shape[1]
    embed, internals = text_forward(model, ids, torch.tensor([eos]))
    score = F.cosine_similarity(image_embed, embed[0], dim=0)
    if span == "context":
        context = model.config.text_config.max_position_embeddings
        padded = torch.zeros(1, context, dtype=ids.dtype)
        padded[0, : eos + 1] = ids[0, : eos + 1]  # the words, then zeros
        lambda_internals = text_forward(model, padded, torch.tensor([eos]))[1]
    else:
        lambda_internals = internals
    blocks = model.text_model.encoder.layers
    first = len(internals) - n_layers
    words = list(range(1, eos))
    total = torch.zeros(length, dtype=image_embed.dtype)
    for offset in range(n_layers):
        inside, seen = internals[first + offset], lambda_internals[first + offset]
        q, k = _projected(blocks[first + offset], seen["q"][0], seen["k"][0], qk)
        normalised_over = list(range(k.shape[0])) if span == "context" else words
        if not with_lambda:
            weight = torch.ones(length, dtype=k.dtype)
        elif normalised_over:
            weight = rescale(cosine_to(k, q[eos]), normalised_over)[:length]
        else:
            weight = torch.zeros(length, dtype=k.dtype)
        total = total + weight * _term(method, score, inside, eos)
    out = torch.zeros(length, dtype=total.dtype)
    for j in words:
        out[j] = F.relu(total[j])
    mass = out.sum()
    return (out / mass if mass > 0 else out), score
