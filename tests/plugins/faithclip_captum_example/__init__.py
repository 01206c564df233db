"""A faithclip plugin from OUTSIDE the package: Captum's IntegratedGradients on the image-text cosine.

Registered through the ``faithclip.methods`` entry point (``captum_ig = faithclip_captum_example:SPEC``);
faithclip is not changed to know it. ``tests/unit/test_check.py`` installs it as a distribution in a
temporary directory and runs ``faithclip check --methods captum_ig`` on it end to end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients

from faithclip.methods.external import callable_method

STEPS = 16  # Riemann steps of the path integral (Captum's default is 50; kept small for the tests)


def integrated_gradients(model, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Maps ``(B, K, H, W)``: IG of cos(image embedding, text embedding) w.r.t. the pixels, black baseline
    (zero normalised pixels), summed over channels."""
    with torch.no_grad():
        text_embeds = F.normalize(model.encode_text(model.tokens(texts)), dim=-1)  # (K, E)

    def cosine(batch: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, K)
        return F.normalize(model.encode_image(batch), dim=-1) @ text_embeds.T

    ig = IntegratedGradients(cosine)
    maps = [
        ig.attribute(pixels, baselines=torch.zeros_like(pixels), target=k, n_steps=STEPS).sum(dim=1)
        for k in range(len(texts))
    ]  # K x (B, H, W)
    return torch.stack(maps, dim=1)  # (B, K, H, W)


SPEC = callable_method(
    integrated_gradients,
    "captum_ig",
    paper="Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017 (Captum)",
)
