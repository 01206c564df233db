"""SigLIP test oracles, written slowly from the formulas (docs/equivalence.md, "SigLIP: the attention-pooling
head"), for ONE image-text pair, never through faithclip's probe or its pooling code.

Image side. ``x`` (T, D) is the pooling head's input: the model's own ``vision_model(...)
.last_hidden_state`` (post-layernormed). From the head's parameters, per head h (width d = D / H):

    q^h = p W_q^h + b_q^h      k^h_j = x_j W_k^h + b_k^h      v^h_j = x_j W_v^h + b_v^h
    A^h_j = exp(q^h . k^h_j / sqrt d) / sum_j' exp(q^h . k^h_j' / sqrt d)        one LEAF tensor per head
    o = concat_h sum_j A^h_j v^h_j      y = o W_o^T + b_o      e = y + MLP(LN(y))   (the image embedding)
    S = exp(logit_scale) cos(e, t) + logit_bias          (logit; probability: sigmoid(S); cosine: cos)

dS/dA^h by autograd with A^h the leaves; dS/do by autograd in a second pass with o the leaf. Then

    lambda_j = minmax_j cos(q, k_j)   (full width, over the T patch tokens)
    Grad-ECLIP       ReLU(lambda_j sum_c (dS/do)_c v_jc)
    Attention-ECLIP  ReLU(lambda_j sum_h dS/dA^h_j)
    self-attention   (1/H) sum_h A^h_j
    GAME (the head)  (1/H) sum_h ReLU(dS/dA^h_j A^h_j)

Text side: the LAST block recomputed from its input (the model's own ``hidden_states[-2]``), per head
with A^h leaves (softmax in float32, as transformers' eager attention takes it), no mask; pooled at the
last position, ``final_layer_norm`` and ``head``; lambda's query is the last position and its min-max runs
over all positions of the (padded) input; the map is ReLU(term) on the words, scaled to sum 1.
"""

from __future__ import annotations

import math

import torch


def _p(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.detach().double()


def layer_norm(values: torch.Tensor, module: torch.nn.LayerNorm) -> torch.Tensor:
    mean = values.mean(-1, keepdim=True)
    variance = ((values - mean) ** 2).mean(-1, keepdim=True)
    return (values - mean) / torch.sqrt(variance + module.eps) * _p(module.weight) + _p(module.bias)


def gelu_tanh(values: torch.Tensor) -> torch.Tensor:
    return 0.5 * values * (1 + torch.tanh(math.sqrt(2 / math.pi) * (values + 0.044715 * values**3)))


def mlp(values: torch.Tensor, module) -> torch.Tensor:
    hidden = gelu_tanh(values @ _p(module.fc1.weight).T + _p(module.fc1.bias))
    return hidden @ _p(module.fc2.weight).T + _p(module.fc2.bias)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


def minmax(values: torch.Tensor, span: list[int]) -> torch.Tensor:
    chosen = values[span]
    low, high = chosen.min(), chosen.max()
    out = torch.zeros_like(values)
    for j in span:
        out[j] = 1.0 if high == low else (values[j] - low) / (high - low)
    return out


def target_value(embedding: torch.Tensor, other: torch.Tensor, model, kind: str) -> torch.Tensor:
    cos = cosine(embedding, other)
    logit = model.logit_scale.detach().double().exp() * cos + model.logit_bias.detach().double()
    return {"cosine": cos, "logit": logit, "probability": torch.sigmoid(logit)}[kind]


def head_pieces(model, x: torch.Tensor) -> dict:
    """q, k, v per head (lists), from the head's parameters in float64."""
    head = model.vision_model.head
    attention = head.attention
    width = x.shape[-1]
    heads = attention.num_heads
    d = width // heads
    weight, bias = _p(attention.in_proj_weight), _p(attention.in_proj_bias)
    probe = _p(head.probe)[0, 0]
    pieces = {"q": [], "k": [], "v": [], "d": d, "heads": heads}
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        w_q, w_k, w_v = weight[:width][rows], weight[width : 2 * width][rows], weight[2 * width :][rows]
        b_q, b_k, b_v = bias[:width][rows], bias[width : 2 * width][rows], bias[2 * width :][rows]
        pieces["q"].append(w_q @ probe + b_q)  # (d,)
        pieces["k"].append(x @ w_k.T + b_k)  # (T, d): row j is x_j W_k^h + b_k^h
        pieces["v"].append(x @ w_v.T + b_v)  # (T, d)
    return pieces


def _head_embedding(model, o: torch.Tensor) -> torch.Tensor:
    """``y = o W_o^T + b_o``, then ``y + MLP(LN(y))``: the image embedding from the head's attention output."""
    head = model.vision_model.head
    y = o @ _p(head.attention.out_proj.weight).T + _p(head.attention.out_proj.bias)
    return y + mlp(layer_norm(y, head.layernorm), head.mlp)


def image_oracle(model, pixels: torch.Tensor, text_embed: torch.Tensor, kind: str = "logit") -> dict:
    """The head's maps for one image ``(1, 3, H, W)`` against one fixed text embedding ``(E,)``."""
    with torch.no_grad():
        x = model.vision_model(pixel_values=pixels).last_hidden_state[0].double()  # (T, D): the head's input
    other = text_embed.detach().double()
    pieces = head_pieces(model, x)
    heads, d, tokens = pieces["heads"], pieces["d"], x.shape[0]
    probabilities = []
    for h in range(heads):
        logits = pieces["k"][h] @ pieces["q"][h] / math.sqrt(d)  # (T,): q^h . k^h_j / sqrt(d)
        probabilities.append((logits.exp() / logits.exp().sum()).requires_grad_(True))  # leaf A^h (T,)
    o = torch.cat([probabilities[h] @ pieces["v"][h] for h in range(heads)])  # (D,): sum_j A^h_j v^h_j per head
    score = target_value(_head_embedding(model, o), other, model, kind)
    attn_grads = torch.autograd.grad(score, probabilities)  # dS/dA^h, each (T,)
    o_leaf = o.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target_value(_head_embedding(model, o_leaf), other, model, kind), o_leaf)  # (D,)
    q = torch.cat(pieces["q"])  # (D,)
    k = torch.cat(pieces["k"], dim=1)  # (T, D)
    v = torch.cat(pieces["v"], dim=1)  # (T, D)
    lam = minmax(torch.stack([cosine(q, k[j]) for j in range(tokens)]), list(range(tokens)))
    grad_term = v @ g  # (T,): sum_c g_c v_jc
    attn_term = torch.stack(attn_grads).sum(0)  # (T,): sum_h dS/dA^h_j
    A = torch.stack([p.detach() for p in probabilities])  # (H, T)
    G = torch.stack(attn_grads)  # (H, T)
    return {
        "score": score.detach(),
        "grad_eclip": torch.relu(lam * grad_term),
        "attention_eclip": torch.relu(lam * attn_term),
        "self_attention": A.mean(0),
        "game_head": torch.relu(G * A).mean(0),
        "attention": A,
        "attention_grad": G,
    }


def rollout_oracle(model, pixels: torch.Tensor, head_attention: torch.Tensor) -> torch.Tensor:
    """The head's averaged row (no identity: its query is not a token), then ``rownorm(mean_h A_l + I)`` of
    every block from the last down, with the blocks' attentions the model itself returns."""
    with torch.no_grad():
        attentions = model.vision_model(
            pixel_values=pixels, output_attentions=True
        ).attentions  # per block (1, H, T, T)
    row = head_attention.mean(0)  # (T,)
    for attention in reversed(attentions):
        mean = attention[0].double().mean(0)
        augmented = mean + torch.eye(mean.shape[0], dtype=mean.dtype)
        augmented = augmented / augmented.sum(-1, keepdim=True)
        row = torch.stack([sum(row[i] * augmented[i, j] for i in range(row.shape[0])) for j in range(row.shape[0])])
    return row


def text_oracle(
    model, input_ids: torch.Tensor, eos: int, image_embed: torch.Tensor, kind: str = "logit", start: int = 0
) -> dict:
    """Grad-ECLIP and Attention-ECLIP of the LAST text block for one text ``(1, L)`` (words: ``start..eos-1``)."""
    text_model = model.text_model
    with torch.no_grad():
        hidden = text_model(input_ids=input_ids, output_hidden_states=True).hidden_states[-2][0].double()  # (L, D)
    block = text_model.encoder.layers[-1]
    attention = block.self_attn
    heads = attention.num_heads
    length, width = hidden.shape
    d = width // heads
    W = {
        name: (_p(getattr(attention, f"{name}_proj").weight), _p(getattr(attention, f"{name}_proj").bias))
        for name in ("q", "k", "v", "out")
    }
    ln1 = layer_norm(hidden, block.layer_norm1)
    q = ln1 @ W["q"][0].T + W["q"][1]
    k = ln1 @ W["k"][0].T + W["k"][1]
    v = ln1 @ W["v"][0].T + W["v"][1]
    query = length - 1
    probabilities = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        logits = (q[:, cols] @ k[:, cols].T) * d**-0.5  # (L, L)
        probabilities.append(torch.softmax(logits.float(), dim=-1).double().requires_grad_(True))  # float32 softmax

    def embedding(o: torch.Tensor) -> torch.Tensor:  # (L, D) attention output -> (E,)
        h1 = hidden + o @ W["out"][0].T + W["out"][1]
        h2 = h1 + mlp(layer_norm(h1, block.layer_norm2), block.mlp)
        pooled = layer_norm(h2, text_model.final_layer_norm)[query]
        return pooled @ _p(text_model.head.weight).T + _p(text_model.head.bias)

    def attention_output(probs):
        return torch.cat([probs[h] @ v[:, h * d : (h + 1) * d] for h in range(heads)], dim=1)  # (L, D)

    other = image_embed.detach().double()
    score = target_value(embedding(attention_output(probabilities)), other, model, kind)
    attn_grads = torch.autograd.grad(score, probabilities)  # (L, L) each
    o_leaf = attention_output([p.detach() for p in probabilities]).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target_value(embedding(o_leaf), other, model, kind), o_leaf)  # (L, D)
    lam = minmax(torch.stack([cosine(q[query], k[j]) for j in range(length)]), list(range(length)))
    words = list(range(start, eos))
    maps = {}
    for method in ("grad_eclip", "attention_eclip"):
        term = torch.zeros(length, dtype=torch.float64)
        for j in words:
            if method == "grad_eclip":
                term[j] = lam[j] * (g[query] * v[j]).sum()
            else:
                term[j] = lam[j] * sum(attn_grads[h][query, j] for h in range(heads))
        relu = torch.relu(term)
        maps[method] = relu / relu.sum() if relu.sum() > 0 else relu
    maps["score"] = score.detach()
    return maps
