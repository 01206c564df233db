"""Train a small ``transformers.SiglipModel`` on the shapes world, on CPU, within a time budget.

Loss: the sigmoid loss of SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training",
ICCV 2023), with multi-positive labels. With unit embeddings ``x_i`` (images), ``y_j`` (captions),
``t = exp(logit_scale)`` (initialised to 10) and ``b = logit_bias`` (initialised to -10)::

    z_ij = +1 if caption j's class is present in image i, else -1
    loss = - mean_{i,j} log sigmoid(z_ij (t x_i . y_j + b))
           + w * mean_c CE(softmax_c' t y_c . y_c', c)     (prompt separation, as in train_clip; t held fixed)

Each image's caption names one of its objects at random, so a caption is a positive of every image
showing its class and identical captions share their positives. The paper normalises the double sum
by the batch size, not by the number of pairs: a constant factor on the gradient, to which AdamW's
step is nearly invariant (the grad-norm clip is not). Prompt separation is shapes-clip's guard
against the fixed point in which the prompts of one colour merge before the image tower can tell
shapes apart (see ``train_clip.prompt_separation_loss``); it acts on the text embeddings only (``t``
enters it detached, so only the sigmoid loss sets ``t`` and ``b``).

transformers' SigLIP pools the text tower's LAST position and is trained without an attention mask,
so texts are always padded to ``max_length`` (16) with ``<pad>`` on the right and only ``input_ids``
are passed; the saved tokenizer has ``model_max_length`` 16 and right padding, so
``tokenizer(texts, padding="max_length")`` gives the layout trained on. The vision tower pools with
its attention-pooling head (no class token). Images are normalised with mean = std = 0.5 (the
``SiglipImageProcessor`` default), resized to ``size x size`` without a crop (an identity at 64 px).
Zero-shot prediction: argmax over the 30 prompts of ``t cos + b``.

``python -m faithclip.shapes.train_siglip --evaluate DIR`` prints the held-out figures of a saved
directory, loaded with plain transformers classes, and its training time, steps, size and parameters.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

from faithclip.shapes.tokenizer import as_transformers_tokenizer, build_word_tokenizer
from faithclip.shapes.train_clip import positive_matrix, prompt_separation_loss
from faithclip.shapes.training import (
    EVALUATE_SEED,
    VisionRecipe,
    budgeted,
    evaluate_main,
    evaluate_saved,
    normalised_pixels,
    train_and_save,
)
from faithclip.shapes.world import COLOUR_NAMES, SHAPES, SceneBatch, ShapesWorld

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiglipRecipe(VisionRecipe):
    """Architecture and optimisation settings of the shapes SigLIP (vision settings from VisionRecipe)."""

    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 512
    max_length: int = 16
    logit_scale_init: float = math.log(10.0)
    logit_bias_init: float = -10.0
    prompt_separation: float = 1.0  # weight of train_clip.prompt_separation_loss


def build_tokenizer(recipe: SiglipRecipe) -> PreTrainedTokenizerFast:
    """The faithclip word tokenizer; right padding to ``model_max_length = max_length``."""
    return as_transformers_tokenizer(build_word_tokenizer([*COLOUR_NAMES, *SHAPES]), recipe.max_length)


def text_ids(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> torch.Tensor:
    """Token ids (T, max_length) in the trained layout: padded to the full length, no attention mask."""
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids


def build_model(recipe: SiglipRecipe, tokenizer: PreTrainedTokenizerFast) -> SiglipModel:
    """A freshly initialised SiglipModel with ``t = exp(logit_scale)`` and ``b`` at the recipe's values."""
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": recipe.text_width,
        "intermediate_size": recipe.text_mlp,
        "num_hidden_layers": recipe.text_layers,
        "num_attention_heads": recipe.text_heads,
        "max_position_embeddings": recipe.max_length,
        "projection_size": recipe.text_width,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": recipe.vision_width,
        "intermediate_size": recipe.vision_mlp,
        "num_hidden_layers": recipe.vision_layers,
        "num_attention_heads": recipe.vision_heads,
        "image_size": recipe.image_size,
        "patch_size": recipe.patch_size,
    }
    config = SiglipConfig(text_config=text_config, vision_config=vision_config)
    model = SiglipModel._from_config(config, attn_implementation="eager")
    with torch.no_grad():
        model.logit_scale.fill_(recipe.logit_scale_init)
        model.logit_bias.fill_(recipe.logit_bias_init)
    return model


def build_image_processor(recipe: SiglipRecipe) -> transformers.SiglipImageProcessorPil:
    # The PIL class saves as "SiglipImageProcessor" and needs no torchvision.
    return transformers.SiglipImageProcessorPil(
        size={"height": recipe.image_size, "width": recipe.image_size},
        resample=3,
        image_mean=list(recipe.image_mean),
        image_std=list(recipe.image_std),
    )


def sigmoid_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``-mean_ij log sigmoid(z_ij logits_ij)``, ``z = +1`` where ``positives`` else ``-1``; (B_img, B_txt)."""
    signs = 2.0 * positives.float() - 1.0  # (B_img, B_txt)
    return -F.logsigmoid(signs * logits).mean()


def _features(output: torch.Tensor | object) -> torch.Tensor:
    return F.normalize(getattr(output, "pooler_output", output).float(), dim=-1)


@torch.no_grad()
def _prompt_logits(model: SiglipModel, recipe: SiglipRecipe, prompt_ids: torch.Tensor, batch: SceneBatch) -> np.ndarray:
    """``t cos + b`` of each scene against each prompt, (N, C)."""
    prompts = _features(model.get_text_features(input_ids=prompt_ids))  # (C, D)
    parts = []
    for start in range(0, len(batch), 256):
        pixels = normalised_pixels(batch.images[start : start + 256], recipe.image_mean, recipe.image_std)
        parts.append(_features(model.get_image_features(pixel_values=pixels)))
    cos = torch.cat(parts) @ prompts.T  # (N, C)
    return (model.logit_scale.exp() * cos + model.logit_bias).numpy()


def train_siglip(
    out_dir: str | Path,
    minutes: float,
    seed: int = 0,
    recipe: SiglipRecipe | None = None,
    command: str | None = None,
    max_steps: int | None = None,
    held_out_scenes: int = 1000,
    mechanism: str = "objects",
) -> dict[str, float]:
    """Train on a ``ShapesWorld(mechanism=mechanism)`` for ``minutes`` (or ``max_steps``, if reached first) and save to ``out_dir``.

    Returns the held-out metrics of the saved files (``evaluate_dir`` with ``held_out_scenes`` scenes per
    figure, its defaults otherwise) plus ``steps``, ``minutes``, ``cpu_minutes`` and the losses.
    """
    recipe = recipe or SiglipRecipe()
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
    recipe: SiglipRecipe,
    command: str | None,
    max_steps: int | None,
    held_out_scenes: int,
    mechanism: str = "objects",
) -> dict[str, float]:
    torch.manual_seed(seed)
    world = ShapesWorld(recipe.image_size, seed=seed, mechanism=mechanism)
    tokenizer = build_tokenizer(recipe)
    model = build_model(recipe, tokenizer)
    prompt_ids = text_ids(tokenizer, list(world.prompts), recipe.max_length)  # (C, max_length)

    def batch_loss(batch: SceneBatch, pixels: torch.Tensor) -> torch.Tensor:
        caption_labels = torch.from_numpy(batch.target_labels)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            image = model.get_image_features(pixel_values=pixels)
            # Each caption is a class prompt: embed the C prompts once, index them per caption.
            text = model.get_text_features(input_ids=prompt_ids)
        image, prompts = _features(image), _features(text)  # (B, D), (C, D)
        scale = model.logit_scale.exp()
        logits = scale * image @ prompts[caption_labels].T + model.logit_bias  # (B, B)
        loss = sigmoid_loss(logits, positive_matrix(torch.from_numpy(batch.labels), caption_labels))
        # Detached scale: the separation term must not tune the sigmoid loss's temperature.
        return loss + recipe.prompt_separation * prompt_separation_loss(prompts, scale.detach())

    return train_and_save(
        out_dir,
        family="siglip",
        model=model,
        world=world,
        recipe=recipe,
        seed=seed,
        minutes=minutes,
        command=command,
        max_steps=max_steps,
        held_out_scenes=held_out_scenes,
        batch_loss=batch_loss,
        eval_logits=lambda batch: _prompt_logits(model, recipe, prompt_ids, batch),
        evaluate_dir=evaluate_dir,
        tokenizer=tokenizer,
        image_processor=build_image_processor(recipe),
        final_state=lambda: {"logit_scale_exp": model.logit_scale.exp().item(), "logit_bias": model.logit_bias.item()},
    )


def evaluate_dir(
    directory: str | Path, scenes: int = 1000, seed: int = EVALUATE_SEED, world_seed: int | None = None
) -> dict:
    """Held-out figures of a saved directory, loaded with ``SiglipModel.from_pretrained``,
    ``AutoTokenizer`` (``padding="max_length"``, no attention mask passed) and ``AutoImageProcessor`` on
    PIL images, scored with the model's own ``logits_per_image``: nothing of the training code takes part.

    ``world_seed`` defaults to the ``seed`` in the directory's ``TRAINING.json``.
    """
    directory = Path(directory)
    model = SiglipModel.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    image_size = model.config.vision_config.image_size
    input_ids = tokenizer(list(ShapesWorld(image_size).prompts), padding="max_length", return_tensors="pt").input_ids
    return evaluate_saved(
        directory,
        image_size,
        scenes,
        seed,
        world_seed,
        lambda pixels: model(input_ids=input_ids, pixel_values=pixels).logits_per_image,
    )


def main(argv: list[str] | None = None) -> int:
    return evaluate_main(argv, "siglip", evaluate_dir)


if __name__ == "__main__":
    sys.exit(main())
