"""Literal, slow transcriptions of the official code of MaskCLIP, CLIP Surgery, M2IB, RISE and occlusion,
used as oracles. They share no code with ``faithclip.methods``: the vision forward is re-written here in
the OpenAI layout (fused ``in_proj`` q/k/v, one block at a time), loops run per mask, per window, per token.

Sources transcribed:
- MaskCLIP value path: Grad-ECLIP ``generate_emap.py`` ``clip_encode_dense`` (``v_final``).
- CLIP Surgery: xmed-lab/CLIP_Surgery ``clip/clip_surgery_model.py`` (``Attention.forward``,
  ``ResidualAttentionBlock.forward``, ``VisionTransformer.forward``) and ``clip/clip.py``
  (``clip_feature_surgery``).
- M2IB: YingWANGG/M2IB ``scripts/iba.py`` (``InformationBottleneck``, ``IBAInterpreter._train_bottleneck``,
  ``calc_loss``) with the layer REPLACED by ``Sequential(layer, bottleneck)`` as ``replace_layer`` does.
- RISE: eclique/RISE ``generate_masks`` (``skimage.transform.resize(order=1, mode='reflect')``, which is
  ``scipy.ndimage.zoom(order=1, mode='mirror', grid_mode=True)``) and ``explain``.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- the OpenAI-layout vision forward ------------------------------------------------------------------
def in_proj(block):
    attn = block.self_attn
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0)
    bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias], 0)
    return weight, bias


def multihead(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head; q, k, v (N, T, D) -> (N, T, D)."""
    n, t, d = q.shape
    hd = d // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * hd ** -0.5, dim=-1)
        out[..., sl] = weights @ v[..., sl]
    return out


def openai_block(block, x):
    weight, bias = in_proj(block)
    q, k, v = F.linear(block.layer_norm1(x), weight, bias).chunk(3, dim=-1)
    x = x + block.self_attn.out_proj(multihead(q, k, v, block.self_attn.num_heads))
    return x + block.mlp(block.layer_norm2(x))


def vision_stem(model, pixels):
    vision = model.vision_model
    x = vision.embeddings(pixels)
    return vision.pre_layrnorm(x)


# ---- MaskCLIP -------------------------------------------------------------------------------------------
@torch.no_grad()
def maskclip_reference(model, pixels, text_embeds):
    """Grad-ECLIP's v_final, then cosine with each text: (B, K, T-1)."""
    blocks = model.vision_model.encoder.layers
    x_in = vision_stem(model, pixels)
    for block in blocks[:-1]:
        x_in = openai_block(block, x_in)
    target = blocks[-1]
    x_before_attn = target.layer_norm1(x_in)
    weight, bias = in_proj(target)
    q, k, v = F.linear(x_before_attn, weight, bias).chunk(3, dim=-1)
    qkv = torch.stack((q, k, v), dim=0)
    qkv = F.linear(qkv, target.self_attn.out_proj.weight, target.self_attn.out_proj.bias)
    v_out = qkv[2]
    v_final = v_out + x_in
    v_final = v_final + target.mlp(target.layer_norm2(v_final))
    v_final = model.vision_model.post_layernorm(v_final)
    v_final = model.visual_projection(v_final)[:, 1:]
    v_final = F.normalize(v_final, dim=-1)
    return torch.einsum("btp,kp->bkt", v_final, F.normalize(text_embeds, dim=-1))


# ---- CLIP Surgery ----------------------------------------------------------------------------------------
def surgery_attention(block, x):
    """Official ``Attention.forward``: returns [x (v-v path), x_ori (original attention)]."""
    weight, bias = in_proj(block)
    B, N, C = x.shape
    heads = block.self_attn.num_heads
    qkv = F.linear(x, weight, bias).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = (C // heads) ** -0.5
    attn_ori = (q @ k.transpose(-2, -1)) * scale
    attn_ori = attn_ori.softmax(dim=-1)
    k = v
    q = k
    attn = (q @ k.transpose(-2, -1)) * scale
    attn = attn.softmax(dim=-1)
    x_ori = (attn_ori @ v).transpose(1, 2).reshape(B, N, C)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    proj = block.self_attn.out_proj
    return [proj(x), proj(x_ori)]


def surgery_block(block, x):
    """Official ``ResidualAttentionBlock.forward`` for a surgery block."""
    if isinstance(x, list):
        x, x_ori = x
        x_res, x_ori_res = surgery_attention(block, block.layer_norm1(x_ori))
        x_ori = x_ori + x_ori_res
        x_ori = x_ori + block.mlp(block.layer_norm2(x_ori))
        x = x + x_res
        return [x, x_ori]
    x_res, x_ori_res = surgery_attention(block, block.layer_norm1(x))
    x_ori = x + x_ori_res
    x_ori = x_ori + block.mlp(block.layer_norm2(x_ori))
    x = x + x_res
    return [x, x_ori]


@torch.no_grad()
def surgery_image_features(model, pixels, surgery_blocks):
    """Official ``VisionTransformer.forward`` of the surgery model: normalised (B, T, P)."""
    blocks = model.vision_model.encoder.layers
    x = vision_stem(model, pixels)
    start = len(blocks) - surgery_blocks
    for index, block in enumerate(blocks):
        x = openai_block(block, x) if index < start else surgery_block(block, x)
    x, x_ori = x
    x = x.clone()
    x[:, 0, :] = x_ori[:, 0, :]
    x = model.visual_projection(model.vision_model.post_layernorm(x))
    return x / x.norm(dim=-1, keepdim=True)


def clip_feature_surgery(image_features, text_features, redundant_feats=None):
    """Official ``clip_feature_surgery``: (B, T, P), (N, P) -> (B, T, N)."""
    if redundant_feats is not None:
        similarity = image_features @ (text_features - redundant_feats).t()
    else:
        prob = image_features[:, :1, :] @ text_features.t()
        prob = (prob * 2).softmax(-1)
        w = prob / prob.mean(-1, keepdim=True)
        b, n_t, n_i, c = image_features.shape[0], text_features.shape[0], image_features.shape[1], image_features.shape[2]
        feats = image_features.reshape(b, n_i, 1, c) * text_features.reshape(1, 1, n_t, c)
        feats *= w.reshape(b, 1, n_t, 1)
        redundant_feats = feats.mean(2, keepdim=True)
        feats = feats - redundant_feats
        similarity = feats.sum(-1)
    return similarity


# ---- M2IB ------------------------------------------------------------------------------------------------
class InformationBottleneck(nn.Module):
    """Official bottleneck (variance fixed to 1 as in the official forward); noise from ``generator``."""

    def __init__(self, shape, generator, noise_tokens=None):
        super().__init__()
        self.noise_tokens = noise_tokens or shape[0]  # noise drawn for this many positions, first T kept
        self.alpha = nn.Parameter(torch.full((1, *shape), fill_value=5.0))
        self.generator = generator
        self.buffer_capacity = None

    def forward(self, x):
        lamb = torch.sigmoid(self.alpha)
        lamb = lamb.expand(x.shape[0], x.shape[1], -1)
        masked_mu = x * lamb
        masked_var = (1 - lamb) ** 2
        self.buffer_capacity = -0.5 * (1 + torch.log(masked_var) - masked_mu ** 2 - masked_var)
        eps = torch.randn((x.shape[0], self.noise_tokens, x.shape[2]), generator=self.generator)[:, :x.shape[1]]
        return masked_mu + masked_var.sqrt() * eps


class LayerThenBottleneck(nn.Module):
    """``mySequential(original_layer, bottleneck)`` for a transformers encoder layer."""

    def __init__(self, layer, bottleneck):
        super().__init__()
        self.layer, self.bottleneck = layer, bottleneck

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        return self.bottleneck(out[0] if isinstance(out, tuple) else out)


def m2ib_reference(model, side, layer_idx, pixels, input_ids, beta=0.1, steps=10, batch_size=10, lr=1.0, seed=0,
                   noise_tokens=None):
    """One (image, text) pair, unpadded text ids (1, L): the official loop -> per-token capacity (T,).
    The noise of each forward is ``randn((batch_size, noise_tokens, D))`` from a generator seeded once,
    first T positions kept (the official code draws ``randn_like`` from the global generator)."""
    model = copy.deepcopy(model).eval()
    tower = model.vision_model if side == "image" else model.text_model
    tokens = (tower.embeddings(pixels) if side == "image" else tower.embeddings(input_ids=input_ids)).shape[1]
    width = tower.config.hidden_size
    bottleneck = InformationBottleneck((tokens, width), torch.Generator().manual_seed(seed), noise_tokens)
    tower.encoder.layers[layer_idx] = LayerThenBottleneck(tower.encoder.layers[layer_idx], bottleneck)
    batch = input_ids.expand(batch_size, -1), pixels.expand(batch_size, -1, -1, -1)
    optimizer = torch.optim.Adam(lr=lr, params=bottleneck.parameters())
    with torch.no_grad():
        bottleneck.alpha.fill_(5.0)
    for _ in range(steps):
        optimizer.zero_grad()
        out = (model.get_text_features(input_ids=batch[0]).pooler_output,
               model.get_image_features(pixel_values=batch[1]).pooler_output)
        compression_term = bottleneck.buffer_capacity.mean()
        fitting_term = nn.CosineSimilarity(eps=1e-6)(out[0], out[1]).mean()
        total = beta * compression_term - fitting_term
        total.backward()
        optimizer.step()
    return torch.nansum(bottleneck.buffer_capacity.mean(axis=0), -1).detach()


# ---- RISE ------------------------------------------------------------------------------------------------
def rise_masks_reference(grids, shifts, input_size):
    """Official ``generate_masks`` given its random draws: grids (N, s, s) 0/1, shifts (N, 2) -> (N, H, W)."""
    s = grids.shape[-1]
    cell_size = np.ceil(np.array(input_size) / s)
    up_size = ((s + 1) * cell_size).astype(int)
    masks = np.empty((grids.shape[0], *input_size))
    for i in range(grids.shape[0]):
        x, y = int(shifts[i, 0]), int(shifts[i, 1])
        up = ndi.zoom(grids[i].numpy().astype(float), (up_size[0] / s, up_size[1] / s), order=1, mode="mirror",
                      grid_mode=True)
        masks[i] = up[x:x + input_size[0], y:y + input_size[1]]
    return torch.tensor(masks)


def rise_reference(score_fn, image, masks, p1):
    """``sal = sum_i score_i * M_i / N / p1`` with a loop over masks; score_fn(image (1,3,H,W)) -> (K,)."""
    n = masks.shape[0]
    sal = 0
    for i in range(n):
        sal = sal + score_fn(image * masks[i].to(image.dtype))[:, None, None] * masks[i].to(image.dtype)
    return sal / n / p1


# ---- occlusion ---------------------------------------------------------------------------------------------
def occlusion_reference(score_fn, image, window, stride, fill=0.0):
    """Slide, fill, score; per pixel the mean drop over covering windows. score_fn -> (K,)."""
    _, _, height, width = image.shape
    base = score_fn(image)
    tops = list(range(0, height - window + 1, stride))
    lefts = list(range(0, width - window + 1, stride))
    if tops[-1] != height - window:
        tops.append(height - window)
    if lefts[-1] != width - window:
        lefts.append(width - window)
    total = torch.zeros(base.shape[0], height, width, dtype=image.dtype)
    count = torch.zeros(height, width, dtype=image.dtype)
    for top in tops:
        for left in lefts:
            occluded = image.clone()
            occluded[..., top:top + window, left:left + window] = fill
            drop = base - score_fn(occluded)
            for i in range(top, top + window):
                for j in range(left, left + window):
                    total[:, i, j] += drop
                    count[i, j] += 1
    return total / count


def rise_expectation_reference(contribution, offsets, cells, p1):
    """Analytic expectation of RISE for a LINEAR score S(x) = sum_u a_u x_u + c, masks as the official code.

    E[sal(u)] = (1/p) (sum_v a_v E[M(u) M(v)] + c E[M(u)]), with E[M(u)] = p and, since each mask is an
    interpolation A g of i.i.d. Bernoulli(p) cells (rows of A sum to 1), E[M(u) M(v)] = p^2 + p (1 - p)
    E_shift <A_u, A_v>. Hence E[sal] = p sum(a) + c + (1 - p) (K a K^T), K the shift-averaged 1-D kernel,
    built here from scipy's zoom of unit vectors. contribution (..., H, H) square, offsets broadcastable.
    """
    size = contribution.shape[-1]
    cell = int(np.ceil(size / cells))
    up = (cells + 1) * cell
    basis = np.stack([ndi.zoom(np.eye(cells)[c], up / cells, order=1, mode="mirror", grid_mode=True)
                      for c in range(cells)], 1)  # (up, cells)
    kernel = np.zeros((size, size))
    for shift in range(cell):
        rows = basis[shift:shift + size]
        kernel += rows @ rows.T
    kernel = torch.tensor(kernel / cell, dtype=contribution.dtype)
    blurred = torch.einsum("uv,...vw,xw->...ux", kernel, contribution, kernel)
    return p1 * contribution.sum((-2, -1), keepdim=True) + offsets + (1 - p1) * blurred
