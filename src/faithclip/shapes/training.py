"""Pieces shared by the trainers of the stand-in models (``train_clip``, ``train_vit``, ``train_siglip``).

All three train on fresh shapes-world scenes for a wall-clock budget: the learning rate and the
curriculum follow the share of the budget spent, training draws sample seeds 0, 1, 2, ... (one per
step) and held-out scenes use seeds from ``HELD_OUT_SEED`` up, and the result is written to a
temporary sibling directory that is renamed onto the target only when complete.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from faithclip.errors import FaithclipError
from faithclip.shapes.world import MAX_OBJECTS, SceneBatch, ShapesWorld

logger = logging.getLogger(__name__)

# Sample seeds of held-out scenes: training draws seeds 0, 1, 2, ... (one per step), never these.
HELD_OUT_SEED = 10**12
# Sample seeds of the figures a trainer's ``--evaluate`` prints for a saved directory: used neither in
# training nor by the evaluation logged during training (HELD_OUT_SEED), so no model was chosen on them.
EVALUATE_SEED = 4 * 10**12


class TrainingError(FaithclipError):
    """Invalid training options or output location."""


class Schedule(Protocol):
    """The recipe fields that ``learning_rate`` and ``curriculum_batch`` read."""

    learning_rate: float
    warmup_fraction: float
    batch_size: int
    single_only_fraction: float
    ramp_fraction: float
    single_share: float
    max_objects: int


@dataclass(frozen=True)
class VisionRecipe:
    """The tiny ViT of every stand-in (the shapes-clip vision tower's size) and the shared optimisation,
    schedule and curriculum settings."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 512
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    single_only_fraction: float = 0.1  # first share of the budget: one object per scene
    ramp_fraction: float = 0.4  # by this share of the budget, scenes reach max_objects
    single_share: float = 1 / 3  # share of single-object scenes in each batch after that
    max_objects: int = MAX_OBJECTS
    image_mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    image_std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    bf16_autocast: bool = True  # CPU autocast: ~2x faster steps where the CPU has AMX/AVX512-BF16
    threads: int = 1  # torch threads; 1 is much faster than 2 when other jobs share the 2 cores
    eval_every_seconds: float = 120.0
    eval_scenes: int = 300


def normalised_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixels / 255 - mean) / std`` as (N, 3, H, W) from uint8 images (N, H, W, 3): what a
    transformers image processor with ``do_rescale`` and ``do_normalize`` gives at the native size."""
    x = torch.from_numpy(images).float().div_(255.0)  # (N, H, W, 3)
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def present_classes(scene_labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """``P[i, c]`` = class ``c`` is among scene ``i``'s objects. (N, K) labels, -1 empty -> (N, C) bool."""
    labels = torch.as_tensor(scene_labels)
    return (labels[:, :, None] == torch.arange(num_classes)[None, None, :]).any(dim=1)


def learning_rate(progress: float, recipe: Schedule) -> float:
    """Linear warm-up over ``warmup_fraction`` of the budget, then cosine decay to zero."""
    warmup = recipe.warmup_fraction
    if progress < warmup:
        return recipe.learning_rate * progress / warmup
    decay = min(1.0, (progress - warmup) / (1.0 - warmup))
    return recipe.learning_rate * 0.5 * (1.0 + math.cos(math.pi * decay))


def curriculum_batch(world: ShapesWorld, progress: float, recipe: Schedule, seed: int) -> SceneBatch:
    """Training scenes for the current share of the budget spent: single objects for the first
    ``single_only_fraction``; then ``single_share`` of each batch single objects and the rest 2..k
    objects, k ramping up to ``max_objects`` by ``ramp_fraction``."""
    n = recipe.batch_size
    if progress < recipe.single_only_fraction:
        return world.sample(n, 1, 1, seed=seed)
    ramp = min(1.0, (progress - recipe.single_only_fraction) / (recipe.ramp_fraction - recipe.single_only_fraction))
    max_objects = 1 + round(ramp * (recipe.max_objects - 1))
    n_single = round(n * recipe.single_share)
    single = world.sample(n_single, 1, 1, seed=seed)
    multi = world.sample(n - n_single, min(2, max_objects), max_objects, seed=seed)
    return SceneBatch(
        images=np.concatenate([single.images, multi.images]),
        # Objects no caption may name (an ignore-shape world's rings) are never positives: -1.
        labels=np.concatenate([single.trained_labels, multi.trained_labels]),
        masks=np.zeros((0,), dtype=bool),  # not needed for training
        boxes=np.concatenate([single.boxes, multi.boxes]),
        colours_rgb=np.concatenate([single.colours_rgb, multi.colours_rgb]),
        targets=np.concatenate([single.targets, multi.targets]),
        prompts=world.prompts,
    )


def adamw(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases, norms, embeddings, class token,
    pooling probe or logit scale/bias)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        exempt = parameter.ndim < 2 or "embedding" in name or "probe" in name
        (no_decay if exempt else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(0.9, 0.98),
    )


class Clock:
    """Wall-clock budget of a training run, plus the process CPU time it used (all threads)."""

    def __init__(self, minutes: float):
        self.budget = minutes * 60.0
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._wall

    @property
    def progress(self) -> float:
        return self.elapsed / self.budget

    def minutes(self) -> float:
        return self.elapsed / 60.0

    def cpu_minutes(self) -> float:
        return (time.process_time() - self._cpu) / 60.0


def check_minutes(minutes: Any) -> None:
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise TrainingError(f"minutes must be a positive number, got {minutes!r}; e.g. --minutes 20")


def check_output_dir(out_dir: Path) -> None:
    """Fail before training if ``out_dir`` cannot be written or would clobber something else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"{out_dir} is a file; pass --out a directory path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").exists():
        raise TrainingError(f"{out_dir} is a non-empty directory that is not a saved model; choose another --out")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # Root ignores permission bits, so try for real instead of asking os.access.
        tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.probe-", dir=parent).cleanup()
    except OSError as error:
        raise TrainingError(
            f"cannot write next to {out_dir} ({error.strerror or error}); choose a writable --out"
        ) from error


def classification_metrics(
    scores: Callable[[SceneBatch], np.ndarray], world: ShapesWorld, n: int, seed: int
) -> dict[str, float]:
    """Held-out figures from ``scores(batch)`` (N, classes), higher = more likely present.

    ``zero_shot_top1``: top-1 over all classes on ``n`` balanced single-object scenes (sample seed
    ``seed``). On ``n`` scenes of 2-4 objects (seed ``seed + 1``): ``multi_object_top1``, the share whose
    top-scoring class is one of the present ones, and ``multi_object_ranking``, the share in which every
    present class scores above every absent one.
    """
    single = world.single_object_set(n, seed=seed)
    zero_shot = (scores(single).argmax(1) == single.labels[:, 0]).mean()
    multi = world.multi_object_set(n, seed=seed + 1)
    multi_scores = scores(multi)  # (n, C)
    present = present_classes(multi.trained_labels, world.num_classes).numpy()  # (n, C), nameable objects
    top1 = present[np.arange(n), multi_scores.argmax(1)].mean()
    lowest_present = np.where(present, multi_scores, np.inf).min(1)
    highest_absent = np.where(present, -np.inf, multi_scores).max(1)
    ranking = (lowest_present > highest_absent).mean()
    return {
        "zero_shot_top1": float(zero_shot),
        "multi_object_top1": float(top1),
        "multi_object_ranking": float(ranking),
    }


def saved_summary(directory: str | Path) -> dict:
    """What a saved directory's ``TRAINING.json`` says about its training, plus its size on disk and
    parameter count (from the safetensors header)."""
    from safetensors import safe_open

    directory = Path(directory)
    record = json.loads((directory / "TRAINING.json").read_text())
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return {
        "command": record.get("command"),
        "seed": record.get("seed"),
        "steps": record.get("steps"),
        "minutes": record.get("minutes"),
        "cpu_minutes": record.get("cpu_minutes"),
        "parameters": parameters,
        "bytes_on_disk": sum(path.stat().st_size for path in directory.iterdir() if path.is_file()),
        **{key: record[key] for key in ("logit_scale_exp", "logit_bias") if key in record},  # SigLIP's t, b
    }


def save_atomically(
    out_dir: Path,
    model: Any,
    tokenizer: Any | None,
    processor: Any,
    record: dict,
    measure: Callable[[Path], dict] | None = None,
) -> None:
    """Write everything to a temporary sibling directory, then rename it onto ``out_dir``.

    ``measure(staging)``, when given, is called on the complete staging directory before the rename and
    its result stored as ``record["metrics_held_out"]``: figures taken from the very files that ship.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        processor.save_pretrained(staging)
        if measure is not None:
            # The record first, so that the measurement reads the directory as it ships (its mechanism).
            (staging / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
            record = {**record, "metrics_held_out": measure(staging)}
        (staging / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
        # mkdtemp and safetensors create owner-only files; a shipped model must be readable by all.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(retired / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved %s", out_dir)


def budgeted(out_dir: str | Path, minutes: float, threads: int, train: Callable[[Path], dict]) -> dict:
    """Run ``train(out_dir)`` after checking the budget and the output directory, on ``threads`` torch
    threads (1 or 2), restoring the caller's thread count afterwards. Every trainer enters here."""
    check_minutes(minutes)
    out = Path(out_dir).expanduser().resolve()
    check_output_dir(out)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, threads)))
    try:
        return train(out)
    finally:
        torch.set_num_threads(previous)


def evaluate_main(argv: list[str] | None, family: str, evaluate_dir: Callable[[str, int, int], dict]) -> int:
    """``python -m faithclip.shapes.train_<family> --evaluate DIR``: a saved directory's held-out figures
    (``evaluate_dir``) and its recorded training summary, as JSON on stdout."""
    import argparse
    import json
    import sys

    import transformers

    parser = argparse.ArgumentParser(
        prog=f"python -m faithclip.shapes.train_{family}",
        description=f"Print the held-out figures of a saved shapes {family} model (train one with "
        f"`faithclip train-shapes --family {family}`).",
    )
    parser.add_argument("--evaluate", metavar="DIR", required=True, help="a directory written by the trainer")
    parser.add_argument("--scenes", type=int, default=1000, help="scenes per figure (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=EVALUATE_SEED, help="first sample seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes must be at least 1, got {args.scenes}")
    if not (Path(args.evaluate) / "config.json").is_file():
        parser.exit(2, f"error: {args.evaluate} holds no config.json; pass a directory the trainer saved\n")
    transformers.utils.logging.disable_progress_bar()
    report = {"held_out": evaluate_dir(args.evaluate, args.scenes, args.seed), "training": saved_summary(args.evaluate)}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


def optimisation_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    world: ShapesWorld,
    recipe: VisionRecipe,
    progress: float,
    step: int,
    batch_loss: Callable[[SceneBatch, torch.Tensor], torch.Tensor],
) -> float:
    """One step of every stand-in's training at ``progress`` (the share of the budget spent): the scheduled
    learning rate, the curriculum's batch drawn with sample seed ``step``, the loss, gradients clipped to
    norm 1, the optimiser's step. Returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(progress, recipe)
    batch = curriculum_batch(world, progress, recipe, seed=step)
    loss = batch_loss(batch, normalised_pixels(batch.images, recipe.image_mean, recipe.image_std))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def train_and_save(
    out_dir: Path,
    *,
    family: str,
    model: torch.nn.Module,
    world: ShapesWorld,
    recipe: VisionRecipe,
    seed: int,
    minutes: float,
    command: str | None,
    max_steps: int | None,
    held_out_scenes: int,
    batch_loss: Callable[[SceneBatch, torch.Tensor], torch.Tensor],
    eval_logits: Callable[[SceneBatch], np.ndarray],
    evaluate_dir: Callable[..., dict],
    tokenizer: Any,
    image_processor: Any,
    final_state: Callable[[], dict] = dict,
) -> dict[str, float]:
    """The stand-ins' shared loop and ending: AdamW with the schedule and curriculum of ``recipe`` until the
    budget (or ``max_steps``) is spent, gradients clipped at norm 1, held-out figures logged every
    ``eval_every_seconds``; then ``TRAINING.json`` and the model saved atomically, with the held-out figures
    of the SAVED files (``evaluate_dir``). ``batch_loss(batch, pixels)`` is the family's loss;
    ``eval_logits(batch)`` its ``(N, C)`` class scores; ``final_state()`` extra figures of the trained model."""
    from dataclasses import asdict

    import transformers
    from tqdm.auto import tqdm

    optimizer = adamw(model, recipe.learning_rate, recipe.weight_decay)

    def logged_metrics() -> dict[str, float]:
        model.eval()
        metrics = classification_metrics(eval_logits, world, recipe.eval_scenes, HELD_OUT_SEED)
        model.train()
        return metrics

    model.train()
    clock = Clock(minutes)
    last_eval = clock.elapsed
    step, history = 0, []
    bar = tqdm(total=round(clock.budget), unit="s", desc=f"train-shapes {family}")
    while clock.elapsed < clock.budget and (max_steps is None or step < max_steps):
        history.append(optimisation_step(model, optimizer, world, recipe, clock.progress, step, batch_loss))
        step += 1
        bar.update(round(clock.elapsed) - bar.n)
        bar.set_postfix(loss=f"{history[-1]:.3f}", step=step)
        if clock.elapsed - last_eval >= recipe.eval_every_seconds:
            logger.info("step %d (%.1f min): loss %.3f, %s", step, clock.minutes(), history[-1], logged_metrics())
            last_eval = clock.elapsed
    bar.close()
    training = {
        "steps": step,
        "minutes": round(clock.minutes(), 2),
        "cpu_minutes": round(clock.cpu_minutes(), 2),
        "first_loss": history[0] if history else float("nan"),
        "final_loss": float(np.mean(history[-20:])) if history else float("nan"),
        **final_state(),
    }
    model.eval()
    record = {
        "command": command,
        "seed": seed,
        "mechanism": world.mechanism,
        "minutes_budget": minutes,
        **training,
        "recipe": asdict(recipe),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "held_out_during_training": {"world_seed": seed, "sample_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + 1],
                                     "scenes": recipe.eval_scenes, **logged_metrics()},
    }  # fmt: skip
    held_out: dict = {}

    def measure(directory: Path) -> dict:
        held_out.update(evaluate_dir(directory, held_out_scenes, world_seed=seed))
        return held_out

    save_atomically(out_dir, model, tokenizer, image_processor, record, measure)
    logger.info("trained %d steps in %.1f min: %s", step, training["minutes"], held_out)
    return {**held_out, **training}


def evaluate_saved(
    directory: Path,
    image_size: int,
    scenes: int,
    seed: int,
    world_seed: int | None,
    class_logits: Callable[[torch.Tensor], torch.Tensor],
) -> dict:
    """Held-out figures of a saved directory: the scenes' PIL images through the directory's own
    ``AutoImageProcessor``, then ``class_logits(pixels) -> (N, C)``, the model's own scores of the world's
    classes. ``world_seed`` defaults to the ``seed`` in the directory's ``TRAINING.json``."""
    import transformers

    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    record = json.loads((directory / "TRAINING.json").read_text())
    if world_seed is None:
        world_seed = record["seed"]
    world = ShapesWorld(image_size, seed=world_seed, mechanism=record.get("mechanism", "objects"))

    @torch.no_grad()
    def scores(batch: SceneBatch) -> np.ndarray:
        parts = []
        for start in range(0, len(batch), 250):
            images = [batch.scene(i).image for i in range(start, min(start + 250, len(batch)))]
            parts.append(class_logits(processor(images=images, return_tensors="pt").pixel_values))
        return torch.cat(parts).numpy()  # (N, C)

    metrics = classification_metrics(scores, world, scenes, seed)
    return {
        "scenes": scenes,
        "world_seed": world_seed,
        "mechanism": world.mechanism,
        "sample_seeds": [seed, seed + 1],
        **metrics,
    }
