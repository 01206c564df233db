"""Literal, per-pair transcriptions of Grad-ECLIP and Attention-ECLIP on the ORIGINAL model.

Grad-ECLIP follows the official code's formula (Cyang-Zhao/Grad-Eclip, grad_eclip_image.ipynb
`grad_eclip` / generate_emap.py `grad_eclip_text`) but on the model's own multi-head forward
(tests/reference/clip_manual.py) and its raw q, k. One score, one backward pass, loops everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.clip_manual import text_forward, vision_forward


def _cosine(a, b):
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def _minmax(x):
    span = x.max() - x.min()
    return torch.ones_like(x) if span == 0 else (x - x.min()) / span


def image_maps(model, pixels, text_embed, method, n_layers=1, with_lambda=True, relu="per_layer"):
    """One image (1,3,H,W), one text embedding (E,) -> (gh*gw,) map, literally."""
    embed, internals = vision_forward(model, pixels)
    score = _cosine(embed[0], text_embed)
    layers = internals[-n_layers:]
    terms = []
    for inside in layers:
        q, k, v = inside["q"][0], inside["k"][0], inside["v"][0]
        lam = _minmax(_cosine(q[0:1], k[1:])) if with_lambda else torch.ones(k.shape[0] - 1, dtype=k.dtype)
        if method == "grad_eclip":
            grad = torch.autograd.grad(score, inside["attn_out"], retain_graph=True)[0][0]
            term = (grad[0:1] * v[1:] * lam[:, None]).sum(-1)  # grad_cls * v_patch * cosine_qk
        else:  # attention_eclip
            grad = torch.autograd.grad(score, inside["attn"], retain_graph=True)[0][0]  # (H, T, T)
            term = lam * grad[:, 0, 1:].sum(0)
        terms.append(term)
    if relu == "per_layer":
        return torch.stack([F.relu(t) for t in terms]).sum(0), score
    return F.relu(torch.stack(terms).sum(0)), score


def text_maps(model, ids, eos, image_embed, method, n_layers=1, with_lambda=True):
    """One text (1, L) with end position eos, one image embedding (E,) -> (L,) map, literally."""
    embed, internals = text_forward(model, ids, torch.tensor([eos]))
    score = _cosine(image_embed, embed[0])
    terms = []
    for inside in internals[-n_layers:]:
        q, k, v = inside["q"][0], inside["k"][0], inside["v"][0]
        content = list(range(1, eos))
        cos = _cosine(q[eos:eos + 1], k)
        lam = torch.zeros_like(cos)
        if content:
            lam[content] = _minmax(cos[content]) if with_lambda else 1.0
        if method == "grad_eclip":
            grad = torch.autograd.grad(score, inside["attn_out"], retain_graph=True)[0][0]
            term = (grad[eos:eos + 1] * v).sum(-1) * lam
        else:
            grad = torch.autograd.grad(score, inside["attn"], retain_graph=True)[0][0]
            term = lam * grad[:, eos, :].sum(0)
        terms.append(term)
    emap = F.relu(torch.stack(terms).sum(0))
    out = torch.zeros_like(emap)
    out[1:eos] = emap[1:eos]
    total = out.sum()
    return (out / total if total > 0 else out), score
