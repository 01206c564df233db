"""Oracle for ``grad_eclip_official``: the published Grad-ECLIP pipeline, re-derived from its description.

Written in this project from the statement of the pipeline in ``docs/audit.md`` (and the formula
docstrings of ``faithclip.methods.official.rewrite``, ``faithclip.methods.official.keepsize`` and
``faithclip.methods.grad_eclip_official``), not from any published code. It is a slow, literal form of
the math: a hand-written forward over a transformers ``CLIPModel``'s weights (batch-first, every head an
explicit loop), explicit LayerNorms, explicit cosines and min-max. It imports nothing from faithclip.

Image side, for one RGB image and unit text embeddings t_k:

1. input: short side capped at ``cap`` (PIL's default filter; the evaluation loop uses 640, the image
   notebook no cap), then resized bicubically to ``(int(w/p + 0.5) p, int(h/p + 0.5) p)``, no crop,
   scaled to [0, 1] and normalised with the CLIP mean/std in float32 (as torchvision's ToTensor and
   Normalize would), then cast to the model's dtype;
2. tokens: patch embeddings, class token, the trained position embeddings of the patches resized
   bicubically (``align_corners=False``) to the image's patch grid;
3. every block but the last ``layers`` as the model computes it (its H heads); the last ``layers`` with
   ONE head over the full width D: A = softmax(q k^T / sqrt(D)), o = A v;
4. S_k = cos(projected class token, t_k); per recomputed layer l, g = dS_k/do at the class token,
   lambda_j = min-max over patches j of cos(q~_cls, k~_j), with q~, k~ = out_proj(q), out_proj(k)
   (``qk="out_proj"``) or q, k (``qk="raw"``); map_j = sum_l ReLU(lambda_j sum_c g_c v_jc).

Text side, for token rows and one image: each row padded with id 0 to the full context, causal mask only;
the last min(8, depth) text blocks recomputed with one head; S = cos(projected end token, image
embedding of the ORIGINAL model on its standard resize + centre crop); with e the end token,
lambda_j = min-max over ALL context positions of cos(q~_e, k~_j) and
map = ReLU(sum_l lambda_j sum_c g_c v_jc) on positions 1..e-1, divided by its sum.

transformers' eager attention takes its softmax in float32 even in a float64 model; the blocks this oracle
computes "as the model does" do the same, so a float64 run agrees with faithclip to ~1e-12. The one-head
blocks take their softmax in the working dtype: they are the pipeline's own attention, not the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_LAYERS = 8

ImageLike = Image.Image | str | Path


@dataclass
class Recomputed:
    """What one recomputed block exposes: q, k, v and the attention output before out_proj, each (B, T, D)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor


# ---- pixels --------------------------------------------------------------------------------------
def load_rgb(image: ImageLike) -> Image.Image:
    """A decoded RGB copy of a PIL image or an image file."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


def short_side_capped(image: Image.Image, cap: int | None) -> Image.Image:
    """The evaluation loop's cap: when the short side exceeds ``cap``, divide both sides by short / cap."""
    width, height = image.size
    short = min(width, height)
    if cap is None or short <= cap:
        return image
    factor = short / cap
    return image.resize((int(width / factor), int(height / factor)))  # PIL's default filter


def normalised(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """8-bit RGB -> ``(1, 3, H, W)`` float32: divide by 255, subtract the mean, divide by the std, per channel."""
    values = torch.from_numpy(np.array(image, dtype=np.uint8)).to(torch.float32) / 255  # (H, W, 3)
    channels = []
    for c in range(3):
        channels.append(
            (values[:, :, c] - torch.tensor(mean[c], dtype=torch.float32)) / torch.tensor(std[c], dtype=torch.float32)
        )  # (H, W)
    return torch.stack(channels)[None]  # (1, 3, H, W)


def keep_size_input(
    image: ImageLike,
    patch: int,
    cap: int | None,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """The explained input ``(1, 3, nh, nw)`` float32: capped, each side rounded to the nearest patch multiple."""
    rgb = short_side_capped(load_rgb(image), cap)
    width, height = rgb.size
    new_width = int(width / patch + 0.5) * patch
    new_height = int(height / patch + 0.5) * patch
    return normalised(rgb.resize((new_width, new_height), Image.BICUBIC), mean, std)


def standard_crop_input(
    image: ImageLike, size: int, crop: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """The model's own input ``(1, 3, crop, crop)``: short side to ``size`` (bicubic, long side rounded down),
    then the centre ``crop x crop`` window (offsets rounded down), as transformers' CLIPImageProcessor."""
    rgb = load_rgb(image)
    width, height = rgb.size
    if width <= height:
        target = (size, int(size * height / width))
    else:
        target = (int(size * width / height), size)
    resized = rgb.resize(target, Image.BICUBIC)
    left, top = (target[0] - crop) // 2, (target[1] - crop) // 2
    return normalised(resized.crop((left, top, left + crop, top + crop)), mean, std)


# ---- the forward, by hand ------------------------------------------------------------------------
def layer_norm(x: torch.Tensor, module: Any) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance)."""
    centred = x - x.mean(-1, keepdim=True)
    variance = (centred * centred).mean(-1, keepdim=True)
    return centred / torch.sqrt(variance + module.eps) * module.weight + module.bias


def linear(x: torch.Tensor, module: Any) -> torch.Tensor:
    return x @ module.weight.T + module.bias


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    raise ValueError(f"activation {name!r} is not written out here")


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None, float32_softmax: bool
) -> torch.Tensor:
    """Attention output before out_proj ``(B, T, D)``, one explicit loop iteration per head of width D / heads."""
    width = q.shape[-1]
    head_width = width // heads
    outputs = []
    for head in range(heads):
        cols = slice(head * head_width, (head + 1) * head_width)
        logits = torch.einsum("btc,bsc->bts", q[..., cols], k[..., cols]) / math.sqrt(head_width)  # (B, T, T)
        if mask is not None:
            logits = logits + mask
        if float32_softmax:
            weights = torch.softmax(logits.to(torch.float32), dim=-1).to(logits.dtype)
        else:
            weights = torch.softmax(logits, dim=-1)
        outputs.append(torch.einsum("bts,bsc->btc", weights, v[..., cols]))  # (B, T, D / heads)
    return torch.cat(outputs, dim=-1)  # (B, T, D)


def block(
    layer: Any, x: torch.Tensor, act: str, heads: int, mask: torch.Tensor | None, float32_softmax: bool
) -> tuple[torch.Tensor, Recomputed]:
    """One pre-LN residual block from the layer's weights: x + out_proj(attention), then x + MLP."""
    attention = layer.self_attn
    normed = layer_norm(x, layer.layer_norm1)
    q, k, v = linear(normed, attention.q_proj), linear(normed, attention.k_proj), linear(normed, attention.v_proj)
    o = attend(q, k, v, heads, mask, float32_softmax)
    x = x + linear(o, attention.out_proj)
    hidden = activation(act, linear(layer_norm(x, layer.layer_norm2), layer.mlp.fc1))
    return x + linear(hidden, layer.mlp.fc2), Recomputed(q=q, k=k, v=v, o=o)


def run_tower(
    layers: list, x: torch.Tensor, act: str, model_heads: int, one_head_layers: int, mask: torch.Tensor | None
) -> tuple[torch.Tensor, list[Recomputed]]:
    """All blocks: the first ones with the model's heads (float32 softmax, as transformers), the last
    ``one_head_layers`` with one head. Returns the output and the recomputed blocks' internals."""
    first_rewritten = len(layers) - one_head_layers
    records = []
    for index, layer in enumerate(layers):
        if index < first_rewritten:
            x, _ = block(layer, x, act, model_heads, mask, float32_softmax=True)
        else:
            x, record = block(layer, x, act, 1, mask, float32_softmax=False)
            records.append(record)
    return x, records


def image_tokens(model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pre-LN tokens ``(B, 1 + gh*gw, D)`` with positions resized to the pixels' grid, and the grid."""
    embeddings = model.vision_model.embeddings
    conv = embeddings.patch_embedding
    assert conv.bias is None, "CLIP's patch embedding has no bias"
    patch = conv.kernel_size[0]
    batch, channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    pieces = pixels.reshape(batch, channels, rows, patch, cols, patch)  # (B, C, gh, p, gw, p)
    pieces = pieces.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * patch * patch)  # (B, N, C*p*p)
    kernel = conv.weight.reshape(conv.weight.shape[0], -1)  # (D, C*p*p), the same (C, py, px) order
    patches = pieces @ kernel.T  # (B, N, D)
    table = embeddings.position_embedding.weight  # (1 + g*g, D)
    trained = math.isqrt(table.shape[0] - 1)
    grid_table = table[1:].T.reshape(1, -1, trained, trained)  # (1, D, g, g)
    resized = F.interpolate(grid_table, size=(rows, cols), mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    positions = torch.cat([table[:1], resized.reshape(table.shape[1], rows * cols).T])  # (1 + N, D)
    class_token = embeddings.class_embedding.reshape(1, 1, -1).expand(batch, 1, -1)  # (B, 1, D)
    tokens = torch.cat([class_token, patches], dim=1) + positions  # (B, 1 + N, D)
    return layer_norm(tokens, model.vision_model.pre_layrnorm), (rows, cols)


def image_embedding(
    model: Any, pixels: torch.Tensor, one_head_layers: int
) -> tuple[torch.Tensor, list[Recomputed], tuple[int, int]]:
    """Projected class-token embeddings ``(B, P)``; ``one_head_layers=0`` is the model's own forward."""
    config = model.config.vision_config
    tokens, grid = image_tokens(model, pixels)
    out, records = run_tower(
        list(model.vision_model.encoder.layers),
        tokens,
        config.hidden_act,
        config.num_attention_heads,
        one_head_layers,
        None,
    )
    pooled = layer_norm(out[:, 0], model.vision_model.post_layernorm)  # (B, D)
    return pooled @ model.visual_projection.weight.T, records, grid


def text_embedding(
    model: Any, ids: torch.Tensor, one_head_layers: int
) -> tuple[torch.Tensor, list[Recomputed], torch.Tensor]:
    """Projected end-token embeddings ``(K, P)`` of full-context rows ``(K, L)`` under the causal mask only.

    The end token is the largest id of a row (CLIP's vocabulary puts it last); returns its positions ``(K,)``.
    """
    config = model.config.text_config
    embeddings = model.text_model.embeddings
    length = ids.shape[1]
    x = embeddings.token_embedding.weight[ids] + embeddings.position_embedding.weight[:length]  # (K, L, D)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)  # (L, L) True above the diagonal
    mask = torch.zeros(length, length, dtype=x.dtype).masked_fill(future, float("-inf"))
    out, records = run_tower(
        list(model.text_model.encoder.layers), x, config.hidden_act, config.num_attention_heads, one_head_layers, mask
    )
    ends = ids.argmax(dim=-1)  # (K,)
    pooled = layer_norm(out[torch.arange(ids.shape[0]), ends], model.text_model.final_layer_norm)  # (K, D)
    return pooled @ model.text_projection.weight.T, records, ends


# ---- the explanation -----------------------------------------------------------------------------
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis."""
    return (a * b).sum(-1) / (torch.sqrt((a * a).sum(-1)) * torch.sqrt((b * b).sum(-1)))


def relevance_weights(record: Recomputed, row: int, query: int, keys: slice, out_proj: Any | None) -> torch.Tensor:
    """lambda: min-max over ``keys`` of cos(q~[query], k~[key]) for one batch ``row``; no gradient flows."""
    with torch.no_grad():
        q, k = record.q[row], record.k[row]  # (T, D) each
        if out_proj is not None:
            q, k = linear(q, out_proj), linear(k, out_proj)
        similarity = cosine(q[query][None], k[keys])  # (T',)
        return (similarity - similarity.min()) / (similarity.max() - similarity.min())


def value_term(grad_query: torch.Tensor, values: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lambda_j * sum_c g_c v_jc, written as a loop-free but literal product: g (D,), v (T', D) -> (T',)."""
    return lam * (values * grad_query[None]).sum(-1)


def _projections(layers: list, count: int, qk: str) -> list[Any | None]:
    if qk not in ("out_proj", "raw"):
        raise ValueError(f"qk is 'out_proj' or 'raw', not {qk!r}")
    return [layer.self_attn.out_proj if qk == "out_proj" else None for layer in layers[len(layers) - count :]]


def official_image_map(
    model: Any,
    image: ImageLike,
    text_embeds: torch.Tensor,
    *,
    cap: int | None,
    qk: str = "out_proj",
    layers: int = 1,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``(K, gh, gw)`` and rewritten-embedding cosines ``(K,)`` of one image against ``text_embeds (K, P)``.

    ``qk="out_proj", layers=1, cap=640`` is the evaluation script; ``qk="raw"``, any ``layers``,
    ``cap=None`` the image notebook.
    """
    dtype = model.visual_projection.weight.dtype
    patch = model.config.vision_config.patch_size
    pixels = keep_size_input(image, patch, cap, mean, std).to(dtype)  # (1, 3, nh, nw)
    projections = _projections(list(model.vision_model.encoder.layers), layers, qk)
    with torch.enable_grad():
        embeds, records, grid = image_embedding(model, pixels, layers)  # (1, P)
        scores = cosine(embeds, text_embeds.to(dtype))  # (K,)
        lambdas = [relevance_weights(r, 0, 0, slice(1, None), p) for r, p in zip(records, projections)]
        maps = []
        for k in range(scores.shape[0]):
            grads = torch.autograd.grad(scores[k], [r.o for r in records], retain_graph=True)  # (1, T, D) each
            patch_map = torch.zeros(grid[0] * grid[1], dtype=dtype)  # (N,)
            for grad, record, lam in zip(grads, records, lambdas):
                patch_map = patch_map + F.relu(value_term(grad[0, 0], record.v[0, 1:].detach(), lam))
            maps.append(patch_map.reshape(grid))  # (gh, gw)
    return torch.stack(maps), scores.detach()


def padded_to_context(ids: torch.Tensor, context: int) -> torch.Tensor:
    """Rows ``(K, L)`` up to and including their end token (largest id), then zeros up to ``context``."""
    rows = torch.zeros(ids.shape[0], context, dtype=torch.long)
    for row in range(ids.shape[0]):
        end = int(ids[row].argmax())
        rows[row, : end + 1] = ids[row, : end + 1]
    return rows


def official_text_map(
    model: Any,
    ids: torch.Tensor,
    image: ImageLike,
    *,
    qk: str = "out_proj",
    layers: int = TEXT_LAYERS,
    size: int | None = None,
    crop: int | None = None,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text maps ``(K, L)`` (zero outside 1..e-1, each summing to 1 there) and cosines ``(K,)`` of token rows
    ``ids (K, L)`` against one image, whose embedding is the ORIGINAL model's on its standard crop
    (``size``/``crop`` default to the model's image size)."""
    dtype = model.text_projection.weight.dtype
    image_size = model.config.vision_config.image_size
    pixels = standard_crop_input(image, size or image_size, crop or image_size, mean, std).to(dtype)
    with torch.no_grad():
        image_embed, _, _ = image_embedding(model, pixels, 0)  # (1, P)
    depth = len(model.text_model.encoder.layers)
    used = min(layers, depth)
    rows = padded_to_context(ids, model.config.text_config.max_position_embeddings)  # (K, context)
    projections = _projections(list(model.text_model.encoder.layers), used, qk)
    maps = torch.zeros(ids.shape[0], ids.shape[1], dtype=dtype)  # (K, L)
    with torch.enable_grad():
        embeds, records, ends = text_embedding(model, rows, used)  # (K, P)
        scores = cosine(embeds, image_embed)  # (K,)
        for k in range(rows.shape[0]):
            end = int(ends[k])
            grads = torch.autograd.grad(scores[k], [r.o for r in records], retain_graph=True)  # (K, L, D) each
            total = torch.zeros(rows.shape[1], dtype=dtype)  # (context,)
            for grad, record, projection in zip(grads, records, projections):
                lam = relevance_weights(record, k, end, slice(None), projection)  # (context,): ALL positions
                total = total + value_term(grad[k, end], record.v[k].detach(), lam)
            kept = F.relu(total)[1:end]  # (e - 1,)
            maps[k, 1:end] = kept / kept.sum()
    return maps, scores.detach()
