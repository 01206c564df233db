"""Train a small ``transformers.CLIPModel`` on the shapes world, on CPU, within a time budget.

Loss: symmetric InfoNCE with multi-positive targets. With unit embeddings ``x_i`` (images),
``t_j`` (captions), logits ``L_ij = exp(s) x_i . t_j`` and ``P_ij = 1`` when the class caption ``j``
names is present in image ``i`` (so identical captions are positives of each other, and a caption is
a positive of every image that shows its object)::

    loss = 1/2 [ mean_i CE(softmax_j L_ij, P_i. / |P_i.|) + mean_j CE(softmax_i L_ij, P_.j / |P_.j|) ]
           + w * mean_c CE(softmax_c' exp(s) t_c . t_c', c)      (prompt separation, see below)

Each image's caption names one of its objects, chosen at random. Learning rate: linear warm-up then
cosine decay, both over the fraction of the time budget spent (the budget, not a step count, is
what the user sets). Curriculum: single-object scenes first, then a mix in which a fixed share of
each batch stays single-object and the rest holds up to ``max_objects`` objects, ramping up.

The result is a plain ``save_pretrained`` directory (model, tokenizer, CLIPImageProcessor config,
``TRAINING.json``) that ``transformers.CLIPModel.from_pretrained`` loads; it is written to a
temporary directory next to the target and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
)

from faithclip.shapes.tokenizer import (
    as_transformers_tokenizer,
    build_word_tokenizer,
)
from faithclip.shapes.training import (  # noqa: F401  (HELD_OUT_SEED, TrainingError: re-exported)
    HELD_OUT_SEED,
    TrainingError,
    adamw,
    budgeted,
    check_minutes,
    check_output_dir,
    curriculum_batch,
    learning_rate,
    normalised_pixels,
    save_atomically,
)
from faithclip.shapes.world import (
    COLOUR_NAMES,
    MAX_OBJECTS,
    SHAPES,
    ShapesWorld,
)

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ShapesRecipe:
    """Architecture and optimisation settings of the shapes CLIP."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 128
    max_length: int = 16
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    single_only_fraction: float = 0.1  # first share of the budget: one object per scene
    ramp_fraction: float = 0.4  # by this share of the budget, scenes reach max_objects
    single_share: float = 1 / 3  # share of single-object scenes in each batch after that
    max_objects: int = MAX_OBJECTS
    prompt_separation: float = 1.0  # weight of prompt_separation_loss
    bf16_autocast: bool = True  # CPU autocast: ~2x faster steps where the CPU has AMX/AVX512-BF16
    threads: int = 1  # torch threads; 1 is much faster than 2 when other jobs share the 2 cores
    eval_every_seconds: float = 120.0
    eval_scenes: int = 300


def build_tokenizer(recipe: ShapesRecipe) -> PreTrainedTokenizerFast:
    return as_transformers_tokenizer(build_word_tokenizer([*COLOUR_NAMES, *SHAPES]), recipe.max_length)


def build_model(recipe: ShapesRecipe, tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    """A freshly initialised CLIPModel whose text pooling uses the tokenizer's end token."""
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": recipe.text_width,
        "intermediate_size": 4 * recipe.text_width,
        "num_hidden_layers": recipe.text_layers,
        "num_attention_heads": recipe.text_heads,
        "max_position_embeddings": recipe.max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": recipe.vision_width,
        "intermediate_size": 4 * recipe.vision_width,
        "num_hidden_layers": recipe.vision_layers,
        "num_attention_heads": recipe.vision_heads,
        "image_size": recipe.image_size,
        "patch_size": recipe.patch_size,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=recipe.projection_dim)
    return CLIPModel._from_config(config, attn_implementation="eager")


def build_image_processor(recipe: ShapesRecipe) -> CLIPImageProcessor:
    size = recipe.image_size
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """CLIP-normalised pixels (N, 3, H, W) from uint8 images (N, H, W, 3); equals CLIPImageProcessor
    at the native size (its resize and crop are identities there)."""
    return normalised_pixels(images, CLIP_MEAN, CLIP_STD)


def positive_matrix(scene_labels: torch.Tensor, caption_labels: torch.Tensor) -> torch.Tensor:
    """``P[i, j]`` = caption ``j``'s class is among image ``i``'s objects. (B, K), (B,) -> (B, B) bool."""
    return (scene_labels[:, None, :] == caption_labels[None, :, None]).any(dim=-1)


def multi_positive_infonce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets spread uniformly over each row's/column's positives.

    ``logits`` (B_img, B_txt) already scaled; ``positives`` (B_img, B_txt) bool, every row and column
    holding at least one positive.
    """
    targets = positives.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1)
    text_to_image = -(targets / targets.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0)
    return 0.5 * (image_to_text.mean() + text_to_image.mean())


def prompt_separation_loss(prompts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``mean_c CE(softmax_c' (scale t_c . t_c'), c)`` over the unit prompt embeddings (C, D).

    Keeps distinct prompts apart. Without it, training falls into a fixed point: while the image
    tower cannot yet tell shapes apart, pulling "a red circle" and "a red square" together lowers the
    loss, and once their embeddings coincide the image tower gets no gradient to separate shapes.
    """
    logits = scale * prompts @ prompts.T  # (C, C)
    return F.cross_entropy(logits, torch.arange(len(prompts)))


@torch.no_grad()
def embed_images(model: CLIPModel, images: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """Unit image embeddings (N, D)."""
    parts = []
    for start in range(0, len(images), chunk):
        out = model.get_image_features(pixel_values=pixel_values(images[start : start + chunk]))
        parts.append(getattr(out, "pooler_output", out))
    return F.normalize(torch.cat(parts), dim=-1)


@torch.no_grad()
def embed_texts(model: CLIPModel, tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Unit text embeddings (T, D)."""
    tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    out = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def held_out_metrics(
    model: CLIPModel, tokenizer: PreTrainedTokenizerFast, world: ShapesWorld, n: int, seed: int = HELD_OUT_SEED
) -> dict[str, float]:
    """Zero-shot top-1 on single-object scenes, and the share of 2-4 object scenes in which every
    present object's prompt scores above every absent one's."""
    was_training = model.training
    model.eval()
    prompts = embed_texts(model, tokenizer, list(world.prompts))  # (C, D)
    single = world.single_object_set(n, seed=seed)
    scores = embed_images(model, single.images) @ prompts.T  # (n, C)
    zero_shot = (scores.argmax(1).numpy() == single.labels[:, 0]).mean()
    multi = world.multi_object_set(n, seed=seed + 1)
    scores = (embed_images(model, multi.images) @ prompts.T).numpy()  # (n, C)
    present = np.zeros_like(scores, dtype=bool)
    named = multi.trained_labels  # (n, K): nameable objects only
    rows, slots = np.nonzero(named >= 0)
    present[rows, named[rows, slots]] = True
    lowest_present = np.where(present, scores, np.inf).min(1)
    highest_absent = np.where(present, -np.inf, scores).max(1)
    ranking = (lowest_present > highest_absent).mean()
    model.train(was_training)
    return {"zero_shot_top1": float(zero_shot), "multi_object_ranking": float(ranking)}


def train_shapes(
    out_dir: str | Path,
    minutes: float,
    seed: int = 0,
    recipe: ShapesRecipe | None = None,
    command: str | None = None,
    max_steps: int | None = None,
    mechanism: str = "objects",
) -> dict[str, float]:
    """Train on a ``ShapesWorld(mechanism=mechanism)`` for ``minutes`` (or ``max_steps``, if reached
    first) and save to ``out_dir``.

    Returns the final held-out metrics plus ``steps``, ``minutes`` and ``final_loss``.
    """
    recipe = recipe or ShapesRecipe()
    return budgeted(
        out_dir, minutes, recipe.threads, lambda out: _train(out, minutes, seed, recipe, command, max_steps, mechanism)
    )


def _train(
    out_dir: Path,
    minutes: float,
    seed: int,
    recipe: ShapesRecipe,
    command: str | None,
    max_steps: int | None,
    mechanism: str = "objects",
) -> dict[str, float]:
    torch.manual_seed(seed)
    # Training draws sample seeds 0, 1, 2, ... (one per step); held-out scenes use HELD_OUT_SEED.
    world = ShapesWorld(recipe.image_size, seed=seed, mechanism=mechanism)
    tokenizer = build_tokenizer(recipe)
    model = build_model(recipe, tokenizer)
    model.train()
    optimizer = adamw(model, recipe.learning_rate, recipe.weight_decay)
    prompt_tokens = tokenizer(list(world.prompts), padding="max_length", truncation=True, return_tensors="pt")

    budget = minutes * 60.0
    start = time.monotonic()
    last_eval = start
    step, loss_value, history = 0, float("nan"), []
    bar = tqdm(total=round(budget), unit="s", desc="train-shapes")
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget or (max_steps is not None and step >= max_steps):
            break
        progress = elapsed / budget
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(progress, recipe)
        batch = curriculum_batch(world, progress, recipe, seed=step)
        caption_labels = torch.from_numpy(batch.target_labels)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            image = model.get_image_features(pixel_values=pixel_values(batch.images))
            # Each caption is a class prompt: embed the C prompts once, index them per caption.
            text = model.get_text_features(**prompt_tokens)
        image = F.normalize(getattr(image, "pooler_output", image).float(), dim=-1)  # (B, D)
        prompts = F.normalize(getattr(text, "pooler_output", text).float(), dim=-1)  # (C, D)
        scale = model.logit_scale.exp()
        positives = positive_matrix(torch.from_numpy(batch.labels), caption_labels)
        loss = multi_positive_infonce(scale * image @ prompts[caption_labels].T, positives)
        loss = loss + recipe.prompt_separation * prompt_separation_loss(prompts, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        loss_value = loss.item()
        history.append(loss_value)
        step += 1
        now = time.monotonic()
        bar.update(round(now - start) - bar.n)
        bar.set_postfix(loss=f"{loss_value:.3f}", step=step)
        if now - last_eval >= recipe.eval_every_seconds:
            metrics = held_out_metrics(model, tokenizer, world, recipe.eval_scenes)
            logger.info("step %d (%.1f min): loss %.3f, %s", step, (now - start) / 60, loss_value, metrics)
            last_eval = time.monotonic()
    bar.close()
    trained_minutes = (time.monotonic() - start) / 60.0
    model.eval()
    metrics = held_out_metrics(model, tokenizer, world, recipe.eval_scenes)
    metrics.update(
        steps=step,
        minutes=round(trained_minutes, 2),
        first_loss=history[0] if history else float("nan"),
        final_loss=float(np.mean(history[-20:])) if history else float("nan"),
    )
    logger.info("trained %d steps in %.1f min: %s", step, trained_minutes, metrics)
    record = {
        "command": command,
        "seed": seed,
        "mechanism": mechanism,
        "minutes_budget": minutes,
        "recipe": asdict(recipe),
        "held_out": {"world_seed": seed, "sample_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + 1]},
        "metrics": metrics,
        "torch": torch.__version__,
    }
    save_atomically(out_dir, model, tokenizer, build_image_processor(recipe), record)
    return metrics
