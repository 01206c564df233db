"""Slow, literal forms of MaskCLIP, CLIP Surgery, M2IB, RISE and occlusion: oracles.

Written here from the methods' published descriptions (the papers' formulas) and from what
docs/methods/other-methods.md and the method docstrings record of faithclip's options, including the
details that only an official code fixes (CLIP Surgery's empty-prompt and set-mean redundancy, M2IB's
unit noise variance and noise stream, RISE's bilinear mask upsampling). No line comes from a published
implementation and nothing is shared with ``faithclip.methods``: the encoder is recomputed here from the
model's weights (explicit heads, explicit LayerNorm), and the maps are built token by token, text by
text, mask by mask, window by window. Tensors are batch-first.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F


# ---- a hand-written encoder, from the weights -------------------------------------------------------------
def _norm(x: torch.Tensor, module) -> torch.Tensor:
    """LayerNorm over the last axis with ``module``'s affine weights (biased variance, as LayerNorm defines it)."""
    centred = x - x.mean(dim=-1, keepdim=True)
    variance = (centred * centred).mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(variance + module.eps) * module.weight + module.bias


def _affine(x: torch.Tensor, linear) -> torch.Tensor:
    """``x W^T + b`` for a ``torch.nn.Linear`` (bias optional)."""
    out = x @ linear.weight.T
    return out if linear.bias is None else out + linear.bias


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":  # GELU's sigmoid approximation (Hendrycks & Gimpel), which CLIP was trained with
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown activation {name!r}")


def _feed_forward(block, x: torch.Tensor, activation: str) -> torch.Tensor:
    """The block's MLP on ``x`` (already normalised): fc2(act(fc1(x)))."""
    return _affine(_activation(activation, _affine(x, block.mlp.fc1)), block.mlp.fc2)


def _attend(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int, causal: bool = False
) -> torch.Tensor:
    """Scaled dot-product attention, one head at a time: ``(B, T, D)`` each -> ``(B, T, D)``, heads side by side."""
    batch, tokens, width = queries.shape
    head_width = width // heads
    outputs = []
    for head in range(heads):
        part = slice(head * head_width, (head + 1) * head_width)
        logits = queries[..., part] @ keys[..., part].transpose(1, 2) / math.sqrt(head_width)  # (B, T, T)
        if causal:  # token i reads tokens 0..i only
            future = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        outputs.append(torch.softmax(logits, dim=-1) @ values[..., part])  # (B, T, d)
    return torch.cat(outputs, dim=-1)  # (B, T, D)


def _values(block, x: torch.Tensor) -> torch.Tensor:
    """The block's value vectors (all heads) of its input ``x`` ``(B, T, D)``."""
    return _affine(_norm(x, block.layer_norm1), block.self_attn.v_proj)


def _encoder_block(block, x: torch.Tensor, activation: str, causal: bool = False) -> torch.Tensor:
    """One pre-LN block: ``x + attn(LN1(x))``, then ``+ MLP(LN2(.))``. ``(B, T, D)`` -> ``(B, T, D)``."""
    attention = block.self_attn
    normed = _norm(x, block.layer_norm1)
    mixed = _attend(
        _affine(normed, attention.q_proj),
        _affine(normed, attention.k_proj),
        _affine(normed, attention.v_proj),
        attention.num_heads,
        causal,
    )
    x = x + _affine(mixed, attention.out_proj)
    return x + _feed_forward(block, _norm(x, block.layer_norm2), activation)


def _image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """Input of the first vision block ``(B, 1 + N, D)``: class token and flattened patches, each linearly
    projected, plus position embeddings, then the pre-LayerNorm."""
    vision = model.vision_model
    kernel = vision.embeddings.patch_embedding.weight  # (D, 3, p, p)
    width, _, patch, _ = kernel.shape
    batch, channels, height, side = pixels.shape
    grid_h, grid_w = height // patch, side // patch
    cut = pixels.reshape(batch, channels, grid_h, patch, grid_w, patch)  # (B, 3, gh, p, gw, p)
    flat = cut.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid_h * grid_w, channels * patch * patch)  # (B, N, 3 p p)
    patches = flat @ kernel.reshape(width, -1).T  # (B, N, D)
    cls = vision.embeddings.class_embedding.expand(batch, 1, width)  # (B, 1, D)
    tokens = torch.cat([cls, patches], dim=1) + vision.embeddings.position_embedding.weight  # (B, 1 + N, D)
    return _norm(tokens, vision.pre_layrnorm)


def _image_readout(model, tokens: torch.Tensor) -> torch.Tensor:
    """Final LayerNorm and visual projection of any token features ``(..., D)`` -> ``(..., P)``."""
    return _affine(_norm(tokens, model.vision_model.post_layernorm), model.visual_projection)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


# ---- MaskCLIP ---------------------------------------------------------------------------------------------
@torch.no_grad()
def maskclip_literal(model, pixels: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's map ``(B, K, N)``: every patch token sent through the last block's VALUE path alone.

    With x the input of the last block: u = x + out_proj(v(x)), f = u + MLP(LN2(u)), e = proj(LN_post(f)),
    map = cos(e, t_k). Written token by token and text by text.
    """
    activation = model.config.vision_config.hidden_act
    blocks = model.vision_model.encoder.layers
    x = _image_tokens(model, pixels)
    for block in blocks[:-1]:
        x = _encoder_block(block, x, activation)
    last = blocks[-1]
    batch, tokens, _ = x.shape
    maps = torch.zeros(batch, text_embeds.shape[0], tokens - 1, dtype=x.dtype)
    for b in range(batch):
        for j in range(1, tokens):
            token = x[b, j]  # (D,)
            through_values = token + _affine(_values(last, token[None, None])[0, 0], last.self_attn.out_proj)
            feature = through_values + _feed_forward(last, _norm(through_values, last.layer_norm2), activation)
            embedding = _image_readout(model, feature)  # (P,)
            for k in range(text_embeds.shape[0]):
                maps[b, k, j - 1] = _cosine(embedding, text_embeds[k])
    return maps


# ---- CLIP Surgery -----------------------------------------------------------------------------------------
@torch.no_grad()
def surgery_token_features(model, pixels: torch.Tensor, layers: int) -> torch.Tensor:
    """Unit-norm token embeddings ``(B, T, P)`` of CLIP Surgery's second path.

    The model runs unchanged; from block s = L - ``layers`` on, a second path starts at the block's input
    x_s and adds, per surgery block l, ``out_proj`` of a value-value self-attention of the ORIGINAL path's
    values v_l (queries and keys replaced by the values; no MLP on this path). Token 0 keeps the original
    path: its row is the model's own image embedding.
    """
    activation = model.config.vision_config.hidden_act
    blocks = model.vision_model.encoder.layers
    start = len(blocks) - layers
    original = _image_tokens(model, pixels)
    for block in blocks[:start]:
        original = _encoder_block(block, original, activation)
    second = original.clone()  # x_s
    for block in blocks[start:]:
        v = _values(block, original)  # (B, T, D), from the original path
        second = second + _affine(_attend(v, v, v, block.self_attn.num_heads), block.self_attn.out_proj)
        original = _encoder_block(block, original, activation)
    second[:, 0] = original[:, 0]
    return F.normalize(_image_readout(model, second), dim=-1)  # (B, T, P)


def surgery_similarity(
    features: torch.Tensor, texts: torch.Tensor, redundant: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP Surgery's feature surgery, element by element: features ``(B, T, P)`` (token 0 the image
    embedding), unit texts ``(K, P)`` -> ``(B, K, T)``.

    With a redundant feature r ``(1, P)`` (the empty prompt's embedding): ``<f_j, t_k - r>``. Without, the
    set mean: ``p = softmax_k(2 <f_0, t_k>)``, ``w_k = p_k / mean_k p``, and channel by channel
    ``f_jc t_kc w_k`` minus its mean over the K texts, summed over channels.
    """
    batch, tokens, _ = features.shape
    count = texts.shape[0]
    similarity = torch.zeros(batch, count, tokens, dtype=features.dtype)
    for b in range(batch):
        if redundant is None:
            prob = torch.softmax(torch.stack([2 * torch.dot(features[b, 0], texts[k]) for k in range(count)]), dim=0)
            weights = prob / prob.mean()  # (K,)
        for j in range(tokens):
            if redundant is not None:
                for k in range(count):
                    similarity[b, k, j] = torch.dot(features[b, j], texts[k] - redundant[0])
                continue
            products = [features[b, j] * texts[k] * weights[k] for k in range(count)]  # K x (P,)
            shared = sum(products) / count  # (P,): the part every text has in common
            for k in range(count):
                similarity[b, k, j] = (products[k] - shared).sum()
    return similarity


# ---- M2IB -------------------------------------------------------------------------------------------------
def _embed(
    model, side: str, inputs: torch.Tensor, edit_after: int, edit: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """One tower's embeddings, with the output of block ``edit_after`` replaced by ``edit(output)``.

    ``inputs``: pixels ``(1, 3, H, W)`` or unpadded token ids ``(1, L)``. ``edit`` may return several samples
    ``(S, T, D)``; the embeddings are then ``(S, P)``. The text tower keeps its causal mask and pools at
    the end token.
    """
    if side == "image":
        tower, activation = model.vision_model, model.config.vision_config.hidden_act
        x = _image_tokens(model, inputs)
    else:
        tower, activation = model.text_model, model.config.text_config.hidden_act
        embeddings = tower.embeddings
        x = embeddings.token_embedding.weight[inputs] + embeddings.position_embedding.weight[: inputs.shape[1]]
    for index, block in enumerate(tower.encoder.layers):
        x = _encoder_block(block, x, activation, causal=side == "text")
        if index == edit_after:
            x = edit(x)
    if side == "image":
        return _image_readout(model, x[:, 0])  # (S, P)
    end = int((inputs[0] == model.config.text_config.eos_token_id).nonzero()[0])
    return _affine(_norm(x[:, end], tower.final_layer_norm), model.text_projection)  # (S, P)


def m2ib_literal(
    model,
    side: str,
    layer: int,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    beta: float = 0.1,
    steps: int = 10,
    samples: int = 10,
    lr: float = 1.0,
    seed: int = 0,
    noise_tokens: int | None = None,
) -> torch.Tensor:
    """M2IB for ONE pair (pixels ``(1, 3, H, W)``, unpadded ids ``(1, L)``) -> per-token capacity ``(T,)`` in nats.

    The output X ``(T, D)`` of block ``layer`` of the explained tower becomes, per noise sample s,
    ``Z_s = lam X + (1 - lam) eps_s`` with ``lam = sigmoid(alpha)``, alpha ``(T, D)`` starting at 5 and fitted
    by Adam to ``beta * mean_{s,t,d} KL[N(lam X, (1 - lam)^2) || N(0, 1)] - mean_s cos(embed(Z_s), other)``.
    The map is sum_d KL of the last forward. Noise: one generator seeded once, ``samples x noise_tokens x
    D`` standard normals per forward (``noise_tokens`` defaults to T), the first T positions kept.
    """
    with torch.no_grad():
        if side == "image":
            other = model.get_text_features(input_ids=input_ids).pooler_output[0]  # (P,)
        else:
            other = model.get_image_features(pixel_values=pixels).pooler_output[0]
    explained = pixels if side == "image" else input_ids
    tokens = _image_tokens(model, pixels).shape[1] if side == "image" else input_ids.shape[1]
    width = model.config.vision_config.hidden_size if side == "image" else model.config.text_config.hidden_size
    dtype = model.text_projection.weight.dtype
    alpha = torch.full((tokens, width), 5.0, dtype=dtype, requires_grad=True)
    optimizer = torch.optim.Adam([alpha], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    drawn = noise_tokens or tokens
    last: dict[str, torch.Tensor] = {}

    def bottleneck(hidden: torch.Tensor) -> torch.Tensor:
        keep = torch.sigmoid(alpha)  # (T, D)
        mean = keep * hidden[0]  # (T, D)
        variance = (1 - keep) ** 2  # (T, D): noise of unit variance, scaled
        # KL[N(m, v) || N(0, 1)] = (v + m^2 - 1 - log v) / 2, element by element
        last["kl"] = 0.5 * (variance + mean**2 - 1 - torch.log(variance))
        noise = torch.randn(samples, drawn, width, generator=generator, dtype=dtype)[:, :tokens]  # (S, T, D)
        return mean + torch.sqrt(variance) * noise  # (S, T, D)

    for _ in range(steps):
        embeddings = _embed(model, side, explained, layer, bottleneck)  # (S, P)
        fitting = sum(_cosine(embeddings[s], other) for s in range(samples)) / samples
        loss = beta * last["kl"].mean() - fitting
        (alpha.grad,) = torch.autograd.grad(loss, [alpha])  # only alpha: the model's own .grad stays untouched
        optimizer.step()
    return last["kl"].detach().sum(dim=-1)  # (T,)


# ---- RISE -------------------------------------------------------------------------------------------------
def rise_masks_literal(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RISE masks ``(N, H, W)`` from kept cells ``(N, s, s)`` and pixel shifts ``(N, 2)``.

    Each s x s grid is upsampled with bilinear interpolation on pixel centres, mirrored at the border
    (scipy's ``zoom(order=1, mode='mirror', grid_mode=True)``, an independent implementation), to
    (s + 1) cells of ceil(side / s) pixels per axis, and the H x W window at the shift is kept.
    """
    cells = grids.shape[-1]
    height, width = size
    big_h = (cells + 1) * math.ceil(height / cells)
    big_w = (cells + 1) * math.ceil(width / cells)
    masks = torch.zeros(grids.shape[0], height, width, dtype=torch.float64)
    for index, grid in enumerate(grids):
        large = ndi.zoom(
            grid.double().numpy(), (big_h / cells, big_w / cells), order=1, mode="mirror", grid_mode=True
        )  # (big_h, big_w)
        top, left = int(shifts[index, 0]), int(shifts[index, 1])
        masks[index] = torch.from_numpy(large[top : top + height, left : left + width].copy())
    return masks


def rise_literal(
    score_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, masks: torch.Tensor, prob: float
) -> torch.Tensor:
    """RISE's Monte-Carlo saliency ``sum_i S(I * M_i) M_i / (N p)``, mask by mask.

    ``image`` ``(1, 3, H, W)``, ``masks`` ``(N, H, W)``, ``score_fn`` -> ``(K,)`` -> ``(K, H, W)``.
    """
    count = masks.shape[0]
    saliency = None
    for mask in masks:
        mask = mask.to(image.dtype)
        scores = score_fn(image * mask)  # (K,)
        term = torch.stack([scores[k] * mask for k in range(scores.shape[0])])  # (K, H, W)
        saliency = term if saliency is None else saliency + term
    return saliency / (count * prob)


def rise_expectation_reference(
    contribution: torch.Tensor, offsets: torch.Tensor, cells: int, p1: float
) -> torch.Tensor:
    """Analytic expectation of RISE for a LINEAR score S(x) = sum_u a_u x_u + c.

    E[sal(u)] = (1/p) (sum_v a_v E[M(u) M(v)] + c E[M(u)]), with E[M(u)] = p and, since each mask is an
    interpolation A g of i.i.d. Bernoulli(p) cells (rows of A sum to 1), E[M(u) M(v)] = p^2 + p (1 - p)
    E_shift <A_u, A_v>. Hence E[sal] = p sum(a) + c + (1 - p) (K a K^T), K the shift-averaged 1-D kernel,
    built here from scipy's zoom of unit vectors. contribution (..., H, H) square, offsets broadcastable.
    """
    size = contribution.shape[-1]
    cell = int(np.ceil(size / cells))
    up = (cells + 1) * cell
    basis = np.stack(
        [ndi.zoom(np.eye(cells)[c], up / cells, order=1, mode="mirror", grid_mode=True) for c in range(cells)], 1
    )  # (up, cells)
    kernel = np.zeros((size, size))
    for shift in range(cell):
        rows = basis[shift : shift + size]
        kernel += rows @ rows.T
    kernel = torch.tensor(kernel / cell, dtype=contribution.dtype)
    blurred = torch.einsum("uv,...vw,xw->...ux", kernel, contribution, kernel)
    return p1 * contribution.sum((-2, -1), keepdim=True) + offsets + (1 - p1) * blurred


# ---- occlusion --------------------------------------------------------------------------------------------
def occlusion_literal(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: int,
    stride: int,
    fill: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus), pixel by pixel: the mean score drop over the windows covering each pixel.

    Windows start every ``stride`` pixels per axis, plus one flush with the far border; inside a window
    the pixels are set to ``fill``, a number or a reference image ``(1, 3, H, W)`` whose pixels at the
    window's place are copied in. ``image`` ``(1, 3, H, W)``, ``score_fn`` -> ``(K,)`` -> ``(K, H, W)``.
    """
    _, _, height, width = image.shape

    def starts(side: int) -> list[int]:
        positions = list(range(0, side - window + 1, stride))
        return positions if positions[-1] == side - window else positions + [side - window]

    reference = score_fn(image)  # (K,)
    drops = {}
    for top in starts(height):
        for left in starts(width):
            covered = image.clone()
            place = (slice(None), slice(None), slice(top, top + window), slice(left, left + window))
            covered[place] = fill[place] if isinstance(fill, torch.Tensor) else fill
            drops[top, left] = reference - score_fn(covered)  # (K,)
    saliency = torch.zeros(reference.shape[0], height, width, dtype=image.dtype)
    for row in range(height):
        for column in range(width):
            over = [
                drop
                for (top, left), drop in drops.items()
                if top <= row < top + window and left <= column < left + window
            ]
            saliency[:, row, column] = sum(over) / len(over)
    return saliency
