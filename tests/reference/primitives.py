"""The layer primitives every slow reference forward is built from, written from their definitions:
LayerNorm ``(x - mean) / sqrt(var + eps) * w + b`` (biased variance), an affine map ``x W^T + b`` and the
exact GELU ``x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))``."""

from __future__ import annotations

import math

import torch


def layer_norm(x: torch.Tensor, module) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + module.eps) * module.weight + module.bias


def linear(x: torch.Tensor, module) -> torch.Tensor:
    return x @ module.weight.T + module.bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
