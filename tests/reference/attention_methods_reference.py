"""Slow, literal forms of five attention explanations (self-attention, rollout, GAME, Grad-CAM, LeGrad): oracles.

Written here from the formulas the papers state and docs/methods/attention-methods.md records (with the
options faithclip chose); no line comes from a published implementation, and nothing is shared with
``faithclip.methods``. Each function explains ONE input for ONE score, keeps full ``(T, T)`` matrices
and spells sums out as loops, so that it reads like the formula it checks. The tensors come from the
test itself: attention from ``clip_manual``'s hand-written forward or from the test's own forward hooks,
gradients from plain ``torch.autograd.grad``.

Notation: ``A_l^h`` the attention probabilities of layer ``l``, head ``h`` (rows are queries), ``H``
heads, ``T`` tokens, ``q`` the pooled query token, ``S`` the explained score.

- self-attention: ``map_j = (1/H) sum_h A_L^h[q, j]``.
- rollout (Abnar & Zuidema, 2020): ``Abar_l = rownorm((1/H) sum_h A_l^h + I)``, ``map = (Abar_L ... Abar_s)[q]``.
- GAME (Chefer, Gur & Wolf, 2021): ``R = I``; for ``l = s .. L``: ``R <- R + Abar_l R`` with
  ``Abar_l = (1/H) sum_h ReLU(dS/dA_l^h * A_l^h)``; ``map = R[q]``.
- Grad-CAM (Selvaraju et al., 2017) on tokens: ``w_c = (1/T) sum_t dS/df_tc`` over ALL tokens,
  ``map_j = ReLU(sum_c w_c f_jc)`` on the patch tokens, ``f`` the input of the explained block.
- LeGrad (Bousselham et al., 2024): per layer ``l >= s`` a score ``s^l`` read from that layer's output
  tokens through the model's final LayerNorm and projection (``pooling="mean"``: the mean over all
  tokens, the option faithclip follows; ``"tokens"``: the sum of every patch token's own score),
  ``m^l_j = (1/(H T)) sum_h sum_i ReLU(ds^l/dA_l)[h, i, j]``, ``map = minmax(sum_l m^l)`` on the patches.
"""

from __future__ import annotations

import torch


def _first_layer(start_layer: int, depth: int) -> int:
    """A start layer counted from the end when negative (``-1`` is the last layer)."""
    return start_layer + depth if start_layer < 0 else start_layer


def _head_average(attention: torch.Tensor) -> torch.Tensor:
    """``(H, T, T)`` -> ``(T, T)``: the attention summed head by head, divided by the number of heads."""
    heads = attention.shape[0]
    total = torch.zeros_like(attention[0])
    for head in range(heads):
        total = total + attention[head]
    return total / heads


def self_attention_literal(attention: torch.Tensor, query: int) -> torch.Tensor:
    """Attention ``(H, T, T)`` of one input -> ``(T,)``: how much the query token reads each token."""
    return _head_average(attention)[query]


def _residual_attention(attention: torch.Tensor) -> torch.Tensor:
    """Rollout's layer matrix ``(T, T)``: head average plus identity (the skip path), each row scaled to sum 1."""
    mixed = _head_average(attention) + torch.eye(attention.shape[-1], dtype=attention.dtype)
    rows = []
    for row in mixed:
        rows.append(row / row.sum())
    return torch.stack(rows)  # (T, T)


def rollout_literal(attentions: list[torch.Tensor], query: int, start_layer: int = 0) -> torch.Tensor:
    """Attentions ``(H, T, T)`` per layer in forward order -> ``(T,)``: row ``query`` of the rollout."""
    first = _first_layer(start_layer, len(attentions))
    flow = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    for layer in range(len(attentions) - 1, first - 1, -1):  # Abar_L Abar_{L-1} ... Abar_s, left to right
        flow = flow @ _residual_attention(attentions[layer])
    return flow[query]


def game_literal(score: torch.Tensor, attentions: list[torch.Tensor], query: int, start_layer: int = 0) -> torch.Tensor:
    """``score``: a scalar whose graph reaches every attention ``(1, H, T, T)`` (forward order) -> ``(T,)`` = R[query].

    ``start_layer=-1`` is the last layer alone.
    """
    first = _first_layer(start_layer, len(attentions))
    explained = attentions[first:]
    gradients = torch.autograd.grad(score, explained, retain_graph=True)  # one (1, H, T, T) per explained layer
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens, dtype=attentions[0].dtype)  # (T, T)
    for attention, gradient in zip(explained, gradients):
        heads = attention.shape[1]
        weighted = torch.zeros(tokens, tokens, dtype=attention.dtype)
        for head in range(heads):
            weighted = weighted + torch.clamp(gradient[0, head] * attention[0, head].detach(), min=0)
        relevance = relevance + (weighted / heads) @ relevance
    return relevance[query]


def grad_cam_literal(score: torch.Tensor, block_input: torch.Tensor) -> torch.Tensor:
    """``block_input`` ``(1, T, D)``: the residual stream entering the explained block, in the graph of
    ``score`` -> ``(T - 1,)`` map on the patch tokens."""
    gradient = torch.autograd.grad(score, block_input, retain_graph=True)[0][0]  # (T, D)
    features = block_input[0].detach()  # (T, D)
    tokens = features.shape[0]
    channel_weights = gradient.sum(dim=0) / tokens  # (D,): the class token's gradient counts too
    patch_map = torch.zeros(tokens - 1, dtype=features.dtype)
    for patch in range(1, tokens):
        patch_map[patch - 1] = torch.relu(torch.dot(channel_weights, features[patch]))
    return patch_map


def _final_embedding(model, token_feature: torch.Tensor) -> torch.Tensor:
    """One ``(D,)`` feature through the model's final LayerNorm and visual projection -> ``(P,)``."""
    norm = model.vision_model.post_layernorm
    centred = token_feature - token_feature.mean()
    normalised = centred / torch.sqrt((centred * centred).mean() + norm.eps)
    return model.visual_projection.weight @ (normalised * norm.weight + norm.bias)  # (P,)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


def legrad_literal(
    model,
    text_embedding: torch.Tensor,
    block_outputs: list[torch.Tensor],
    attentions: list[torch.Tensor],
    start_layer: int,
    pooling: str = "mean",
) -> torch.Tensor:
    """One image and one text. ``block_outputs`` ``(1, T, D)`` and ``attentions`` ``(1, H, T, T)`` of EVERY
    layer, forward order, in the graph -> the min-max normalised ``(T - 1,)`` patch map."""
    depth = len(block_outputs)
    tokens = attentions[0].shape[-1]
    total = torch.zeros(tokens, dtype=attentions[0].dtype)
    for layer in range(_first_layer(start_layer, depth), depth):
        outputs = block_outputs[layer][0]  # (T, D)
        if pooling == "mean":  # all tokens averaged, the class token included, then read out once
            layer_score = _cosine(_final_embedding(model, outputs.mean(dim=0)), text_embedding)
        else:  # every patch token read out on its own; their scores summed
            layer_score = sum(_cosine(_final_embedding(model, outputs[j]), text_embedding) for j in range(1, tokens))
        gradient = torch.autograd.grad(layer_score, attentions[layer], retain_graph=True)[0][0]  # (H, T, T)
        positive = torch.clamp(gradient, min=0)
        heads = positive.shape[0]
        for key in range(tokens):
            total[key] += positive[:, :, key].sum() / (heads * tokens)  # mean over heads and query rows
    patches = total[1:]
    return (patches - patches.min()) / (patches.max() - patches.min())
