"""Cascading model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

The image tower of a DEEP COPY of the model is re-initialised block by block from the top: the image
projection, the final LayerNorm, encoder layers ``L-1, ..., 0``, then the embeddings with the first
LayerNorm. After each step ``s`` (cumulative: blocks above stay random) the method's map is recomputed
and compared with the original map by Spearman's rank correlation (average ranks for ties):

    rho_s = pearson(rank(map_original), rank(map_s))

A map that depends on what the model learned decorrelates as the model is destroyed; high ``rho``
after randomisation means the map reflects the input or the architecture, not the parameters.

Re-initialisation (documented choice, seeded): every weight and bias of a Linear or Conv layer and every
embedding tensor is redrawn from ``N(0, sigma^2)`` with ``sigma`` the original tensor's standard deviation
(0.02 when that is 0), so activations keep their scale; LayerNorm weights become 1 and biases 0. The
user's model is never touched.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from faithclip.mapmath import spearman
from faithclip.metrics import MetricSpec, register_metric
from faithclip.metrics.case import MetricCase, MetricValue
from faithclip.models.clip import ModelHandle


def cascade_blocks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The image tower's blocks, top first: ``(name, modules)``, as the model's family declares them
    (``Family.cascade_blocks``; CLIP: projection, post_layernorm, layers L-1..0, embeddings)."""
    from faithclip.models.families import family_of

    return family_of(model).cascade_blocks(model)


@torch.no_grad()
def reinitialise(modules: list[nn.Module], generator: torch.Generator) -> None:
    """Redraw the parameters of ``modules`` in place (see the module docstring)."""
    for module in modules:
        for sub in module.modules():
            own = list(sub.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(sub, nn.LayerNorm):
                sub.weight.fill_(1.0)
                sub.bias.zero_()
                continue
            for _, parameter in own:
                sigma = float(parameter.float().std()) if parameter.numel() > 1 else 0.0
                sigma = sigma if sigma > 0 else 0.02
                draw = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * sigma
                parameter.copy_(
                    draw.to(device=parameter.device, dtype=parameter.dtype)
                )  # drawn on the CPU: same numbers on any device


def cascading_randomisation(
    handle: ModelHandle,
    explain: Callable[[ModelHandle], torch.Tensor],
    seed: int = 0,
    original: torch.Tensor | None = None,
) -> tuple[list[str], list[float]]:
    """Spearman correlation of ``explain(randomised copy)`` with ``explain(handle)`` after each cascade step."""
    original = explain(handle) if original is None else original
    model = copy.deepcopy(handle.model)
    randomised = ModelHandle(
        model=model, tokenizer=handle.tokenizer, preprocess=handle.preprocess, name=f"{handle.name} (randomised copy)"
    )
    generator = torch.Generator().manual_seed(seed)
    names, correlations = [], []
    for name, modules in cascade_blocks(model):
        reinitialise(modules, generator)
        names.append(name)
        correlations.append(spearman(original, explain(randomised)))
    del model, randomised
    return names, correlations


def run_sanity(case: MetricCase) -> MetricValue:
    if case.explain is None:
        raise ValueError("the randomisation test needs a way to recompute the map (MetricCase.explain)")
    names, correlations = cascading_randomisation(case.handle, case.explain, case.seed, case.patch_map)
    finite = [c for c in correlations if c == c]
    return MetricValue(
        values={"final": correlations[-1], "mean": sum(finite) / len(finite) if finite else float("nan")},
        curves={"spearman": (list(range(1, len(names) + 1)), correlations)},
        details={"steps": names},
    )


register_metric(
    MetricSpec(
        name="sanity_cascade",
        category="sanity",
        higher_is_better=False,
        protocol="cascading, Spearman",
        summary="Spearman correlation of maps after cascading re-initialisation of the image tower (top first)",
        paper="Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018",
        run=run_sanity,
        outputs={"final": "Spearman, all randomised", "mean": "Spearman, mean over steps"},
        recomputes_map=True,
    )
)
