"""An independent, hand-written forward of a transformers CLIPModel, from its weights.

Used as an oracle: it shares no code with faithclip's probe. It recomputes every layer with explicit
multi-head attention and keeps, per layer, q, k, v (B, T, D), the attention probabilities (B, H, T, T)
and the attention output before out_proj (B, T, D), all inside the autograd graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(name)


def _block(layer, x, heads, act, mask=None):
    """One pre-LN transformer block; returns output and its internals."""
    attn = layer.self_attn
    h = F.layer_norm(x, (x.shape[-1],), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    q = h @ attn.q_proj.weight.T + attn.q_proj.bias
    k = h @ attn.k_proj.weight.T + attn.k_proj.bias
    v = h @ attn.v_proj.weight.T + attn.v_proj.bias
    B, T, D = q.shape
    d = D // heads
    qh = q.reshape(B, T, heads, d).permute(0, 2, 1, 3)
    kh = k.reshape(B, T, heads, d).permute(0, 2, 1, 3)
    vh = v.reshape(B, T, heads, d).permute(0, 2, 1, 3)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        logits = logits + mask
    # transformers' eager attention takes the softmax in float32 whatever the model's dtype; do the same
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(logits.dtype)
    o = (probs @ vh).permute(0, 2, 1, 3).reshape(B, T, D)
    x = x + o @ attn.out_proj.weight.T + attn.out_proj.bias
    h2 = F.layer_norm(x, (D,), layer.layer_norm2.weight, layer.layer_norm2.bias, layer.layer_norm2.eps)
    mlp = layer.mlp
    x = x + _act(act, h2 @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    return x, {"q": q, "k": k, "v": v, "attn": probs, "attn_out": o}


def vision_forward(model, pixels):
    """Image embeddings (B, E) and per-layer internals."""
    vm = model.vision_model
    cfg = model.config.vision_config
    emb = vm.embeddings
    patches = F.conv2d(pixels, emb.patch_embedding.weight, stride=cfg.patch_size)  # (B, D, gh, gw)
    patches = patches.flatten(2).transpose(1, 2)
    cls = emb.class_embedding.expand(pixels.shape[0], 1, -1)
    x = torch.cat([cls, patches], 1) + emb.position_embedding.weight[None]
    x = F.layer_norm(x, (x.shape[-1],), vm.pre_layrnorm.weight, vm.pre_layrnorm.bias, vm.pre_layrnorm.eps)
    internals = []
    for layer in vm.encoder.layers:
        x, inside = _block(layer, x, cfg.num_attention_heads, cfg.hidden_act)
        internals.append(inside)
    pooled = F.layer_norm(
        x[:, 0], (x.shape[-1],), vm.post_layernorm.weight, vm.post_layernorm.bias, vm.post_layernorm.eps
    )
    return pooled @ model.visual_projection.weight.T, internals


def text_forward(model, ids, eos_positions):
    """Text embeddings (K, E) and per-layer internals (causal mask; pooled at eos_positions)."""
    tm = model.text_model
    cfg = model.config.text_config
    L = ids.shape[1]
    x = tm.embeddings.token_embedding.weight[ids] + tm.embeddings.position_embedding.weight[:L][None]
    mask = torch.full((L, L), float("-inf"), dtype=x.dtype).triu(1)
    internals = []
    for layer in tm.encoder.layers:
        x, inside = _block(layer, x, cfg.num_attention_heads, cfg.hidden_act, mask)
        internals.append(inside)
    x = F.layer_norm(x, (x.shape[-1],), tm.final_layer_norm.weight, tm.final_layer_norm.bias, tm.final_layer_norm.eps)
    pooled = x[torch.arange(ids.shape[0]), eos_positions]
    return pooled @ model.text_projection.weight.T, internals
