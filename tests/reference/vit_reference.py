"""Slow, literal forms of a ViT / DeiT image classifier and of the explanations of its class logit,
written from the formulas (not from faithclip's code), used as test oracles. Run on a float64 model.

Forward (``forward_literal``): patches cut out one by one and projected with the patch convolution's
weights as a matrix product; the sequence ``[CLS, (distillation), patches]`` plus the position table
(bicubically resized to the grid when it differs, as DINO-style interpolation defines it); every block
``x + W_o concat_h softmax(q_h k_h^T / sqrt(d)) v_h + b_o``, then ``+ MLP(LN_2(.))``, each head in its own
loop; the final LayerNorm of the class token; ``logits = W f + b``.

Grad-ECLIP / Attention-ECLIP (``eclip_literal``): the last block recomputed with every head's attention
``A^h`` a LEAF tensor, ``dS/dA^h[cls, j]`` by autograd, ``lambda_j`` the min-max over patches of
``cos(q_cls, k_j)`` (all channels), map ``ReLU(lambda_j * sum_h dS/dA^h[cls, j])``.

The published ViT notebook (``official_literal``): the last block with ONE head over the full width,
logits scaled by ``1/sqrt(D/H)``, the LayerNormed input as the attention's residual (``residual``), the
class logit of the keep-size input, ``g = dS/do_cls`` (o a leaf), map ``ReLU(lambda_j sum_c g_c v_jc)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference.primitives import gelu, layer_norm, linear


def backbone_of(model):
    return model.vit if hasattr(model, "vit") else model.deit


def embed_literal(model, pixels: torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` -> the first block's input ``(P + N, D)`` (P prefix tokens)."""
    embeddings = backbone_of(model).embeddings
    conv = embeddings.patch_embeddings.projection
    patch = conv.kernel_size[0]
    grid_h, grid_w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    weight = conv.weight.reshape(conv.weight.shape[0], -1)  # (D, 3 p p)
    patches = []
    for row in range(grid_h):
        for col in range(grid_w):
            cut = pixels[0, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch].reshape(-1)
            patches.append(weight @ cut + conv.bias)
    prefix = [embeddings.cls_token[0, 0]]
    if hasattr(embeddings, "distillation_token"):
        prefix.append(embeddings.distillation_token[0, 0])
    table = embeddings.position_embeddings[0]  # (P + g*g, D)
    count = len(prefix)
    trained = int(round((table.shape[0] - count) ** 0.5))
    positions = table[count:]
    if (grid_h, grid_w) != (trained, trained):
        square = positions.reshape(1, trained, trained, -1).permute(0, 3, 1, 2)
        positions = F.interpolate(square, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        positions = positions.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)
    return torch.stack(prefix + patches) + torch.cat([table[:count], positions])


def attention_heads(
    attention, normed: torch.Tensor, heads: int, scale: float, leaf: bool = False, float32_softmax: bool = True
):
    """q, k, v ``(T, D)`` (all heads) and the probabilities ``(1, H, T, T)``, head by head (one leaf when ``leaf``).

    ``float32_softmax``: transformers' ViT/DeiT eager attention takes the softmax in float32 and casts it
    back (``eager_attention_forward``), so a float64 model's probabilities carry float32 rounding; the oracle
    rounds the same way (torch's float32 softmax of its own logits) to compare at float64 precision. The
    published notebook's one-head attention takes it in the model's dtype (``float32_softmax=False``)."""
    q, k, v = linear(normed, attention.q_proj), linear(normed, attention.k_proj), linear(normed, attention.v_proj)
    width = q.shape[-1] // heads
    probabilities = []
    for head in range(heads):
        cut = slice(head * width, (head + 1) * width)
        logits = (q[:, cut] @ k[:, cut].T) * scale
        if float32_softmax:
            a = torch.softmax(logits, dim=-1, dtype=torch.float32).to(logits.dtype)
        else:
            weights = torch.exp(logits - logits.max(-1, keepdim=True).values)
            a = weights / weights.sum(-1, keepdim=True)
        probabilities.append(a)
    stacked = torch.stack(probabilities)[None]  # (1, H, T, T): every later use reads this tensor
    return q, k, v, stacked.detach().requires_grad_(True) if leaf else stacked


def block_literal(
    layer,
    x: torch.Tensor,
    heads: int | None = None,
    leaf: bool = False,
    residual: str = "input",
    record: dict | None = None,
) -> torch.Tensor:
    """One block on ``x`` ``(T, D)``. ``heads=None``: the model's heads at their own scale; an int: that
    many heads over the full width, scale kept at the model's ``1/sqrt(D/H)`` (the notebook)."""
    attention = layer.attention
    model_heads = attention.num_attention_heads
    scale = 1 / math.sqrt(x.shape[-1] / model_heads)
    own = heads is None
    heads = model_heads if own else heads
    normed = layer_norm(x, layer.layernorm_before)
    q, k, v, probabilities = attention_heads(attention, normed, heads, scale, leaf, float32_softmax=own)
    width = v.shape[-1] // heads
    output = torch.cat([probabilities[0, h] @ v[:, h * width : (h + 1) * width] for h in range(heads)], dim=-1)
    if record is not None and "output_leaf" in record:
        output = output.detach().requires_grad_(True)
    mid = (normed if residual == "normalized" else x) + linear(output, attention.o_proj)
    hidden = layer_norm(mid, layer.layernorm_after)
    out = mid + linear(gelu(linear(hidden, layer.mlp.fc1)), layer.mlp.fc2)
    if record is not None:
        record.update(q=q, k=k, v=v, attention=probabilities, output=output, block_input=x)
    return out


def forward_literal(model, pixels: torch.Tensor, last: dict | None = None, **last_options) -> dict:
    """Logits ``(C,)`` of one image, with each block's input ``(1, T, D)`` and attentions (in the graph), and the
    last block recorded in ``last`` (``last_options`` go to its ``block_literal``)."""
    x = embed_literal(model, pixels)
    inputs, attentions = [], []
    layers = backbone_of(model).layers
    for index, layer in enumerate(layers):
        batched = x[None]  # (1, T, D): recorded, and the tensor the block reads
        inputs.append(batched)
        x = batched[0]
        record = {} if last is None or index < len(layers) - 1 else last
        x = block_literal(layer, x, record=record, **(last_options if index == len(layers) - 1 else {}))
        attentions.append(record["attention"])  # (1, H, T, T)
    feature = layer_norm(x[0], backbone_of(model).layernorm)
    return {"logits": linear(feature, model.classifier), "inputs": inputs, "attentions": attentions}


def minmax_cosine(q: torch.Tensor, k: torch.Tensor, prefix: int) -> torch.Tensor:
    cosine = torch.stack([torch.dot(q[0], k[j]) / (q[0].norm() * k[j].norm()) for j in range(prefix, k.shape[0])])
    return (cosine - cosine.min()) / (cosine.max() - cosine.min())


def eclip_literal(model, pixels: torch.Tensor, label: int, prefix: int) -> tuple[float, torch.Tensor]:
    """The class logit and ``ReLU(lambda_j sum_h dS/dA^h[cls, j])`` over the patches ``(N,)``."""
    last: dict = {}
    score = forward_literal(model, pixels, last, leaf=True)["logits"][label]
    gradient = torch.autograd.grad(score, last["attention"])[0][0]  # dS/dA^h: (H, T, T)
    summed = sum(gradient[head, 0, prefix:] for head in range(gradient.shape[0]))  # class-token row, patches
    lam = minmax_cosine(last["q"].detach(), last["k"].detach(), prefix)
    return float(score.detach()), torch.relu(lam * summed)


def official_literal(
    model, keep_pixels: torch.Tensor, label: int, residual: str = "normalized"
) -> tuple[float, torch.Tensor]:
    """The notebook's class logit on the keep-size input and its map over the patches ``(N,)``."""
    x = embed_literal(model, keep_pixels)
    layers = backbone_of(model).layers
    for layer in layers[:-1]:
        x = block_literal(layer, x)
    last = {"output_leaf": True}
    x = block_literal(layers[-1], x, heads=1, residual=residual, record=last)
    score = linear(layer_norm(x[0], backbone_of(model).layernorm), model.classifier)[label]
    gradient = torch.autograd.grad(score, last["output"])[0][0]  # dS/do at the class token, (D,)
    v = last["v"].detach()
    lam = minmax_cosine(last["q"].detach(), last["k"].detach(), 1)
    channel_sums = torch.stack([sum(gradient[c] * v[j, c] for c in range(v.shape[1])) for j in range(1, v.shape[0])])
    return float(score.detach()), torch.relu(lam * channel_sums)
