"""Train a small ``transformers.ViTForImageClassification`` on the shapes world, on CPU, in a time budget.

The stand-in for a supervised ViT classifier: 30 labels whose names are the world's prompts
(``id2label[c] == world.prompts[c]``, e.g. "a red circle"), the vision tower of shapes-clip's size,
classifying from the class token. Loss: cross-entropy against a soft target spread uniformly over the
classes present in a scene (one-hot for a single object)::

    loss = mean_i  - sum_c  P_ic / |P_i.|  log softmax_c(logits_i)

so in a scene of several objects every present object's logit is pushed up, not only one of them.
Schedule, curriculum, optimiser and atomic saving are those of ``train_clip`` (``shapes.training``).
Images are normalised with mean = std = 0.5, the ``ViTImageProcessor`` default, written to the saved
processor config; the processor resizes to ``size x size`` without a crop, an identity on the 64 px
scenes trained on.

``python -m faithclip.shapes.train_vit --evaluate DIR`` prints the held-out figures of a saved
directory, loaded with plain transformers classes, and its training time, steps, size and parameters.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import ViTConfig, ViTForImageClassification

from faithclip.shapes.training import (
    EVALUATE_SEED,
    VisionRecipe,
    budgeted,
    evaluate_main,
    evaluate_saved,
    normalised_pixels,
    present_classes,
    train_and_save,
)
from faithclip.shapes.world import SceneBatch, ShapesWorld

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViTRecipe(VisionRecipe):
    """Architecture and optimisation settings of the shapes ViT classifier.

    ``initializer_range``: the standard deviation of the truncated-normal initialisation of every weight
    matrix, embedding and the class token (transformers' ``ViTConfig.initializer_range``; 0.02, its
    default, for every shipped model). At 0.02 the 128-wide tower starts near a saddle: the attention
    logits are tiny, the class token averages all 64 patches, and a fact held by one patch at a given
    position (the ``cue`` world's) is not learned in hundreds of steps; at 0.08 (about the scale of the
    shapes CLIP's attention init) it is (docs/p2.md, "The ViT classifier").
    """

    initializer_range: float = 0.02


def build_model(recipe: ViTRecipe, labels: tuple[str, ...]) -> ViTForImageClassification:
    """A freshly initialised classifier whose label names are ``labels`` (the world's prompts)."""
    config = ViTConfig(
        hidden_size=recipe.vision_width,
        num_hidden_layers=recipe.vision_layers,
        num_attention_heads=recipe.vision_heads,
        intermediate_size=recipe.vision_mlp,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        initializer_range=recipe.initializer_range,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    return ViTForImageClassification._from_config(config, attn_implementation="eager")


def build_image_processor(recipe: ViTRecipe) -> transformers.ViTImageProcessorPil:
    # The PIL class saves as "ViTImageProcessor" and needs no torchvision.
    return transformers.ViTImageProcessorPil(
        size={"height": recipe.image_size, "width": recipe.image_size},
        resample=2,
        image_mean=list(recipe.image_mean),
        image_std=list(recipe.image_std),
    )


def soft_target_cross_entropy(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_c P_ic / |P_i.| log softmax(logits_i)_c``; logits (B, C), present (B, C) bool,
    every row holding at least one present class."""
    targets = present.float()
    targets = targets / targets.sum(1, keepdim=True)  # (B, C), rows sum to 1
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


@torch.no_grad()
def _class_logits(model: ViTForImageClassification, recipe: ViTRecipe, batch: SceneBatch) -> np.ndarray:
    parts = []
    for start in range(0, len(batch), 256):
        pixels = normalised_pixels(batch.images[start : start + 256], recipe.image_mean, recipe.image_std)
        parts.append(model(pixel_values=pixels).logits)
    return torch.cat(parts).numpy()  # (N, C)


def train_vit(
    out_dir: str | Path,
    minutes: float,
    seed: int = 0,
    recipe: ViTRecipe | None = None,
    command: str | None = None,
    max_steps: int | None = None,
    held_out_scenes: int = 1000,
    mechanism: str = "objects",
) -> dict[str, float]:
    """Train on a ``ShapesWorld(mechanism=mechanism)`` for ``minutes`` (or ``max_steps``, if reached first) and save to ``out_dir``.

    Returns the held-out metrics of the saved files (``evaluate_dir`` with ``held_out_scenes`` scenes per
    figure, its defaults otherwise) plus ``steps``, ``minutes``, ``cpu_minutes`` and the losses.
    """
    recipe = recipe or ViTRecipe()
    return budgeted(
        out_dir,
        minutes,
        recipe.threads,
        lambda out: _train(out, minutes, seed, recipe, command, max_steps, held_out_scenes, mechanism),
    )


def _train(
    out_dir: Path,
    minutes: float,
    seed: int,
    recipe: ViTRecipe,
    command: str | None,
    max_steps: int | None,
    held_out_scenes: int,
    mechanism: str = "objects",
) -> dict[str, float]:
    torch.manual_seed(seed)
    world = ShapesWorld(recipe.image_size, seed=seed, mechanism=mechanism)
    model = build_model(recipe, world.prompts)

    def batch_loss(batch: SceneBatch, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            logits = model(pixel_values=pixels).logits
        return soft_target_cross_entropy(logits.float(), present_classes(batch.labels, world.num_classes))

    return train_and_save(
        out_dir,
        family="vit",
        model=model,
        world=world,
        recipe=recipe,
        seed=seed,
        minutes=minutes,
        command=command,
        max_steps=max_steps,
        held_out_scenes=held_out_scenes,
        batch_loss=batch_loss,
        eval_logits=lambda batch: _class_logits(model, recipe, batch),
        evaluate_dir=evaluate_dir,
        tokenizer=None,
        image_processor=build_image_processor(recipe),
    )


def evaluate_dir(
    directory: str | Path, scenes: int = 1000, seed: int = EVALUATE_SEED, world_seed: int | None = None
) -> dict:
    """Held-out figures of a saved directory, loaded with ``ViTForImageClassification.from_pretrained``
    and ``AutoImageProcessor`` on PIL images: nothing of the training code takes part.

    ``world_seed`` defaults to the ``seed`` in the directory's ``TRAINING.json``.
    """
    directory = Path(directory)
    model = ViTForImageClassification.from_pretrained(directory).eval()
    prompts = ShapesWorld(model.config.image_size).prompts
    if [model.config.id2label[c] for c in range(len(prompts))] != list(prompts):
        raise ValueError(f"{directory}: id2label is not the shapes world's prompts in order")
    return evaluate_saved(
        directory, model.config.image_size, scenes, seed, world_seed, lambda pixels: model(pixel_values=pixels).logits
    )


def main(argv: list[str] | None = None) -> int:
    return evaluate_main(argv, "vit", evaluate_dir)


if __name__ == "__main__":
    sys.exit(main())
