"""A slow, hand-written BLIP retrieval forward and the ECLIP maps on it: test oracles for the blip family.

Written here from the architecture's formulas (the weights are read from the model's parameters; no
module's forward is called, nothing is shared with faithclip):

Image tower (pre-norm ViT):  x_0 = [cls; conv_p(I)] + pos;  per block
    n = LN_1(x),  [q | k | v] = n W_qkv^T + b   (channels [0:D], [D:2D], [2D:3D])
    A_h = softmax(q_h k_h^T / sqrt(D/H))  (one head at a time; dS/dA at a leaf),  o = concat_h A_h v_h
    x = x + W_proj o + b,  x = x + MLP(LN_2(x));   image feature f = W_vp LN_post(x)[0] + b
Text tower (post-norm BERT, no cross-attention): x_0 = LN_e(word[ids] + pos);  per block
    A_h = softmax(q_h k_h^T / sqrt(D/H) + mask), padding keys masked out; o = concat_h A_h v_h
    x = LN_a(x + W_o o + b),  x = LN_out(x + W_2 gelu(W_1 x + b_1) + b_2);   text feature t = W_tp x[0] + b
Score: cos(f, t).

The ECLIP maps (Grad-ECLIP: lambda_j sum_c (dS/do_query)_c v_jc; Attention-ECLIP: lambda_j sum_h dS/dA_h[query, j];
lambda the min-max normalised cosine of q_query and k_j) take the pooled query at position 0 on BOTH sides
(the class token, [CLS]); a text map covers the words strictly between [CLS] and [SEP].

The published one-head rewrite (the Grad-ECLIP BLIP notebook): the last block with ONE head over the full
width, the scale kept at the model's 1/sqrt(D/H) (``attn.scale``), the keep-size input with the position
table resized bicubically to its grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.primitives import gelu, layer_norm, linear


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float,
    key_mask: torch.Tensor | None,
    leaf: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v ``(T, D)`` of one input -> output ``(T, D)`` and the probabilities ``(1, heads, T, T)``, head by
    head; with ``leaf`` the probabilities are a leaf tensor the output is computed from (dS/dA by autograd)."""
    tokens, width = q.shape
    d = width // heads
    probabilities = []
    for h in range(heads):
        channels = slice(h * d, (h + 1) * d)
        logits = (q[:, channels] @ k[:, channels].T) * scale  # (T, T)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[None, :], float("-inf"))
        probabilities.append(torch.softmax(logits, dim=-1))
    attention = torch.stack(probabilities)[None]  # (1, heads, T, T)
    if leaf:  # a leaf A that the output reads, joined to q, k's graph so that lower layers still see the
        # softmax path: value = A, dS/d(leaf) = dS/dA, and the gradient also flows on into q and k
        free = attention.detach().requires_grad_(True)
        attention = free + (attention - attention.detach())
        attention.leaf = free
    out = torch.cat([attention[0, h] @ v[:, h * d : (h + 1) * d] for h in range(heads)], dim=-1)  # (T, D)
    return out, attention


def image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` -> ``(T, D)``: class token and patches plus positions (resized to the grid if needed)."""
    embeddings = model.vision_model.embeddings
    patch = embeddings.patch_size
    patches = F.conv2d(pixels, embeddings.patch_embedding.weight, embeddings.patch_embedding.bias, stride=patch)
    grid = tuple(patches.shape[-2:])
    tokens = torch.cat([embeddings.class_embedding[0], patches[0].flatten(1).T], dim=0)  # (T, D)
    table = embeddings.position_embedding[0]  # (1 + g*g, D)
    trained = int(round((table.shape[0] - 1) ** 0.5))
    if grid != (trained, trained):
        square = table[1:].T.reshape(1, -1, trained, trained)
        resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)[0].flatten(1).T
        table = torch.cat([table[:1], resized], dim=0)
    return tokens + table


def vision_forward(model, pixels: torch.Tensor, one_head_last: bool = False):
    """Image feature ``(E,)`` and per block a dict of ``hidden_in, q, k, v, attn (leaf), attn_out``."""
    config = model.config.vision_config
    heads, width = config.num_attention_heads, config.hidden_size
    x = image_tokens(model, pixels)
    internals = []
    blocks = model.vision_model.encoder.layers
    for index, block in enumerate(blocks):
        batched = x[None]  # (1, T, D): the block input, as the graph sees it (Grad-CAM differentiates it)
        x = batched[0]
        inside = {"hidden_in": batched}
        qkv = linear(layer_norm(x, block.layer_norm1), block.self_attn.qkv)  # (T, 3D)
        q, k, v = qkv[:, :width], qkv[:, width : 2 * width], qkv[:, 2 * width :]
        used = 1 if one_head_last and index == len(blocks) - 1 else heads
        out, attention = attend(q, k, v, used, (width // heads) ** -0.5, None, leaf=True)
        inside.update(q=q, k=k, v=v, attn=attention, attn_out=out)
        x = x + linear(out, block.self_attn.projection)
        x = x + linear(gelu(linear(layer_norm(x, block.layer_norm2), block.mlp.fc1)), block.mlp.fc2)
        internals.append(inside)
    feature = linear(layer_norm(x, model.vision_model.post_layernorm)[0], model.vision_proj)
    return feature, internals


def text_forward(model, ids: torch.Tensor, mask: torch.Tensor):
    """One text ``(L,)`` with its mask -> text feature ``(E,)`` and per block the internals."""
    config = model.config.text_config
    heads, width = config.num_attention_heads, config.hidden_size
    embeddings = model.text_encoder.embeddings
    x = embeddings.word_embeddings.weight[ids] + embeddings.position_embeddings.weight[: ids.shape[0]]
    x = layer_norm(x, embeddings.LayerNorm)
    internals = []
    for block in model.text_encoder.encoder.layer:
        attention_module = block.attention.self
        q, k, v = (
            linear(x, attention_module.query),
            linear(x, attention_module.key),
            linear(x, attention_module.value),
        )
        out, attention = attend(q, k, v, heads, (width // heads) ** -0.5, mask.bool(), leaf=True)
        internals.append({"hidden_in": x, "q": q, "k": k, "v": v, "attn": attention, "attn_out": out})
        x = layer_norm(x + linear(out, block.attention.output.dense), block.attention.output.LayerNorm)
        x = layer_norm(
            x + linear(gelu(linear(x, block.intermediate.dense)), block.output.dense), block.output.LayerNorm
        )
    return linear(x[0], model.text_proj), internals


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


def minmax_over(values: torch.Tensor, span: list[int]) -> torch.Tensor:
    """Min-max of ``values`` over the indices ``span``, zero elsewhere; a flat span gives 1 on it."""
    low, high = values[span].min(), values[span].max()
    out = torch.zeros_like(values)
    for j in span:
        out[j] = 1.0 if high == low else (values[j] - low) / (high - low)
    return out


def query_cosines(q: torch.Tensor, k: torch.Tensor, query: int) -> torch.Tensor:
    return torch.stack([cosine(q[query], k[j]) for j in range(k.shape[0])])


def unweighted_term(method: str, score: torch.Tensor, inside: dict, query: int) -> torch.Tensor:
    """``(T,)``: sum_c (dS/do_query)_c v_jc (grad_eclip) or sum_h dS/dA_h[query, j] (attention_eclip)."""
    if method == "grad_eclip":
        gradient = torch.autograd.grad(score, inside["attn_out"], retain_graph=True)[0]  # (T, D)
        return torch.stack([(gradient[query] * inside["v"][j]).sum() for j in range(inside["v"].shape[0])])
    gradient = torch.autograd.grad(score, inside["attn"].leaf, retain_graph=True)[0][0]  # (H, T, T)
    return torch.stack([gradient[:, query, j].sum() for j in range(gradient.shape[-1])])


def eclip_image_map(model, pixels, text_feature, method, layers=1, relu="per_layer"):
    """One image ``(1, 3, H, W)`` -> the ``(gh*gw,)`` map and the score."""
    feature, internals = vision_forward(model, pixels)
    score = cosine(feature, text_feature)
    terms = []
    for inside in internals[len(internals) - layers :]:
        patches = list(range(1, inside["k"].shape[0]))
        lam = minmax_over(query_cosines(inside["q"], inside["k"], 0), patches)
        terms.append((lam * unweighted_term(method, score, inside, 0))[1:])
    total = sum(F.relu(t) for t in terms) if relu == "per_layer" else F.relu(sum(terms))
    return total, score


def eclip_text_map(model, ids, mask, sep, image_feature, method, layers=1, span="inner", padded_length=35):
    """One text ``(L,)`` -> the ``(L,)`` map (words 1..sep-1, sum 1) and the score. ``span="context"``: lambda
    from the text padded with id 0 to ``padded_length`` tokens, padding masked (the BLIP pipeline's layout)."""
    feature, internals = text_forward(model, ids, mask)
    score = cosine(image_feature, feature)
    if span == "context":
        length = max(padded_length, ids.shape[0])
        padded, padded_mask = torch.zeros(length, dtype=ids.dtype), torch.zeros(length, dtype=mask.dtype)
        padded[: ids.shape[0]], padded_mask[: ids.shape[0]] = ids, mask
        seen = text_forward(model, padded, padded_mask)[1]
    else:
        seen = internals
    words = list(range(1, sep))
    total = torch.zeros(ids.shape[0], dtype=image_feature.dtype)
    for offset in range(len(internals) - layers, len(internals)):
        q, k = seen[offset]["q"], seen[offset]["k"]
        normalised_over = list(range(k.shape[0])) if span == "context" else words
        lam = minmax_over(query_cosines(q, k, 0), normalised_over)[: ids.shape[0]]
        total = total + lam * unweighted_term(method, score, internals[offset], 0)
    out = torch.zeros_like(total)
    for j in words:
        out[j] = F.relu(total[j])
    return out / out.sum() if out.sum() > 0 else out, score


def official_image_map(model, pixels, text_feature):
    """The published BLIP pipeline's map on ``pixels`` (the keep-size input): last block with ONE head (scale
    1/sqrt(D/H)), g = dS/do at the class token, lambda over the patches from raw q, k,
    map_j = ReLU(lambda_j sum_c g_c v_jc). Returns the ``(gh*gw,)`` map and the rewritten score."""
    feature, internals = vision_forward(model, pixels, one_head_last=True)
    score = cosine(feature, text_feature)
    last = internals[-1]
    patches = list(range(1, last["k"].shape[0]))
    lam = minmax_over(query_cosines(last["q"], last["k"], 0), patches)
    return F.relu((lam * unweighted_term("grad_eclip", score, last, 0))[1:]), score
