"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) on ViT tokens, as Grad-ECLIP's comparison computes it for CLIP
(Cyang-Zhao/Grad-Eclip, generate_emap.py ``grad_cam``).

The feature map is the residual stream entering block ``layer`` (default: the last block), one
D-channel vector f_j per token. Channel weights are the gradient of the score averaged over ALL tokens
(the class token included, as in the reference code), and the map is their ReLU'd weighted sum on the
patch tokens:

    w_c   = (1 / T) * sum_t dS/df_tc
    map_j = ReLU( sum_c w_c f_jc )          (j a patch token)

Image side only: on texts the token "feature map" has no spatial pooling to average over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faithclip.methods.context import Context, MapResult
from faithclip.probe import resolve_layers
from faithclip.registry import MethodSpec, register_method


def grad_cam_map(channel_weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_c w_c f_jc)``: weights ``(B, K, D)``, features ``(B|1, K|1, T, D)`` -> ``(B, K, T)``."""
    return F.relu((channel_weights[..., None, :] * features).sum(-1))


def grad_cam(ctx: Context, layer: int = -1) -> MapResult:
    (index,) = resolve_layers([layer], ctx.num_layers)
    scores, caps = ctx.probe_forward([index], capture=("hidden_in",))
    (features,) = caps[index].require("hidden_in")  # (C, T, D)
    (weights,) = ctx.grads(scores, [features], reduce=lambda g: g.mean(dim=2))  # token mean: (B, K, D)
    per_token = grad_cam_map(weights, ctx.pair(features.detach()))  # (B, K, T)
    return MapResult(
        maps=ctx.token_map(per_token).detach(), scores=scores.detach(), layer_indices=[index], options={"layer": layer}
    )


register_method(
    MethodSpec(
        name="grad_cam",
        assumes_pooled_score=None,  # any scalar of the image: the ITM score too
        families=("*",),  # reads the model through the family adapter only
        paper="Selvaraju et al., Grad-CAM, ICCV 2017 (on ViT tokens, as in Grad-ECLIP's comparison)",
        image=grad_cam,
        defaults={"layer": -1},
        summary="ReLU(sum_c w_c f_jc), f = input of the block, w = token-averaged dS/df",
    )
)
