"""Literal, per-pair transcriptions of self-attention, rollout, GAME, Grad-CAM and LeGrad: oracles.

One input, one score, loops and full matrices everywhere; nothing is shared with faithclip's methods.
Each function follows the reference code it names, line by line, on tensors the TEST captured itself
(hand-written forward in ``clip_manual`` or the test's own forward hooks):

- ``rollout_literal``: ``compute_rollout_attention`` of hila-chefer/Transformer-Explainability (as copied in
  Cyang-Zhao/Grad-Eclip, generate_emap.py): ``matrices_aug[i] = (A_i + I) / rowsum``, joint attention
  ``aug[i] @ joint`` from ``start_layer`` upward.
- ``game_literal``: the CLIP notebook of hila-chefer/Transformer-MM-Explainability (``interpret``):
  ``R = I; R = R + bmm(clamp(grad * cam, 0).mean(heads), R)``, one ``torch.autograd.grad`` per layer.
- ``grad_cam_literal``: Grad-Eclip generate_emap.py ``grad_cam``: token-mean gradient times features.
- ``legrad_literal``: WalBouss/LeGrad ``compute_legrad_clip``: ``ln_post(feat.mean(tokens)) @ proj``,
  normalised, one gradient per layer on that layer's attention, clamp, mean heads, mean query rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_attention_literal(attention: torch.Tensor, query: int) -> torch.Tensor:
    """attention ``(H, T, T)`` of one input -> ``(T,)``: the query's row averaged over heads."""
    heads = attention.shape[0]
    row = torch.zeros(attention.shape[-1], dtype=attention.dtype)
    for h in range(heads):
        row = row + attention[h, query, :]
    return row / heads


def rollout_literal(attentions: list[torch.Tensor], query: int, start_layer: int = 0) -> torch.Tensor:
    """attentions: per layer ``(H, T, T)`` of one input, forward order -> ``(T,)`` row of the rollout."""
    if start_layer < 0:
        start_layer += len(attentions)
    tokens = attentions[0].shape[-1]
    eye = torch.eye(tokens, dtype=attentions[0].dtype)
    all_layer_matrices = [a.sum(dim=0) / a.shape[0] for a in attentions]  # avg_heads
    all_layer_matrices = [m + eye for m in all_layer_matrices]
    matrices_aug = [m / m.sum(dim=-1, keepdim=True) for m in all_layer_matrices]
    joint_attention = matrices_aug[start_layer]
    for i in range(start_layer + 1, len(matrices_aug)):
        joint_attention = matrices_aug[i] @ joint_attention
    return joint_attention[query]


def game_literal(score: torch.Tensor, attentions: list[torch.Tensor], query: int, start_layer: int = 0) -> torch.Tensor:
    """score: a scalar with a graph to every attention ``(1, H, T, T)`` (forward order) -> ``(T,)`` = R[query].

    ``start_layer=-1`` means the last layer only (the notebook's convention).
    """
    if start_layer == -1:
        start_layer = len(attentions) - 1
    num_tokens = attentions[0].shape[-1]
    R = torch.eye(num_tokens, num_tokens, dtype=attentions[0].dtype)
    R = R.unsqueeze(0)
    for i, attn_probs in enumerate(attentions):
        if i < start_layer:
            continue
        grad = torch.autograd.grad(score, [attn_probs], retain_graph=True)[0].detach()
        cam = attn_probs.detach()
        cam = cam.reshape(-1, cam.shape[-1], cam.shape[-1])
        grad = grad.reshape(-1, grad.shape[-1], grad.shape[-1])
        cam = grad * cam
        cam = cam.reshape(1, -1, cam.shape[-1], cam.shape[-1])
        cam = cam.clamp(min=0).mean(dim=1)
        R = R + torch.bmm(cam, R)
    return R[0, query]


def grad_cam_literal(score: torch.Tensor, layer_feat: torch.Tensor) -> torch.Tensor:
    """layer_feat ``(1, T, D)``: input of the explained block, in the graph of score -> ``(T-1,)``."""
    grad = torch.autograd.grad(score, layer_feat, retain_graph=True)[0][0].detach()  # (T, D)
    grad_weight = grad.mean(0, keepdim=True)  # (1, D)
    return F.relu((grad_weight * layer_feat[0, 1:].detach()).sum(-1))


def _ln_post_proj(model, x: torch.Tensor) -> torch.Tensor:
    ln = model.vision_model.post_layernorm
    x = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)
    return x @ model.visual_projection.weight.T


def legrad_literal(model, text_embedding: torch.Tensor, feats: list[torch.Tensor], attns: list[torch.Tensor],
                   start_layer: int, pooling: str = "mean") -> torch.Tensor:
    """One image, one text. feats: block outputs ``(1, T, D)``, attns ``(1, H, T, T)``, for ALL layers in
    forward order, in the graph. Returns the min-max normalised ``(T-1,)`` map."""
    depth = len(feats)
    starting_depth = start_layer if start_layer >= 0 else depth + start_layer
    text_embedding = F.normalize(text_embedding, dim=-1)
    accum_expl_map = 0
    for layer in range(starting_depth, depth):
        intermediate_feat = feats[layer][0]  # (T, D)
        if pooling == "mean":
            img_feat = F.normalize(_ln_post_proj(model, intermediate_feat.mean(dim=0)), dim=-1)
            sim = (text_embedding * img_feat).sum()
        else:  # every patch token scored on its own, summed
            sim = 0
            for j in range(1, intermediate_feat.shape[0]):
                token_feat = F.normalize(_ln_post_proj(model, intermediate_feat[j]), dim=-1)
                sim = sim + (text_embedding * token_feat).sum()
        grad = torch.autograd.grad(sim, [attns[layer]], retain_graph=True)[0][0]  # (H, T, T)
        grad = torch.clamp(grad, min=0.0)
        image_relevance = grad.mean(dim=0).mean(dim=0)[1:]
        accum_expl_map = accum_expl_map + image_relevance
    return (accum_expl_map - accum_expl_map.min()) / (accum_expl_map.max() - accum_expl_map.min())
