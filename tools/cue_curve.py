"""How fast a stand-in learns the ``cue`` world (docs/p2.md, "Planted mechanisms"): held-out accuracy of the
cue's class, its colour and its shape (the cue's column) every few steps, on a STEP schedule.

    python tools/cue_curve.py --family vit [--initializer-range 0.08] [--steps 150] [--every 25] [--seed 0]
    python tools/cue_curve.py --family siglip [--steps 300]

The trainers run on a wall-clock budget, so their step counts depend on the machine's load; this diagnostic
replays the same loop (``shapes.training``: AdamW, warm-up and cosine decay, gradients clipped at norm 1, the
families' own losses and bf16 autocast) with ``progress = step / steps`` instead, saves nothing, and prints one
line per ``--every`` steps: the mean loss of those steps and top-1 over the 30 classes on 300 held-out
single-object cue scenes (``HELD_OUT_SEED``), with the colour and the shape of the prediction scored apart
(chance 1/6 and 1/5). One thread. A tool of the repository, run from its root.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from faithclip.shapes.train_clip import positive_matrix, prompt_separation_loss
from faithclip.shapes.training import (
    HELD_OUT_SEED,
    adamw,
    optimisation_step,
    present_classes,
)
from faithclip.shapes.world import SHAPES, ShapesWorld


def vit_parts(world: ShapesWorld, initializer_range: float):
    from faithclip.shapes import train_vit

    recipe = train_vit.ViTRecipe(initializer_range=initializer_range)
    model = train_vit.build_model(recipe, world.prompts)

    def loss(batch, pixels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            logits = model(pixel_values=pixels).logits
        return train_vit.soft_target_cross_entropy(logits.float(), present_classes(batch.labels, world.num_classes))

    return recipe, model, loss, lambda batch: train_vit._class_logits(model, recipe, batch)


def siglip_parts(world: ShapesWorld):
    from faithclip.shapes import train_siglip as ts

    recipe = ts.SiglipRecipe()
    tokenizer = ts.build_tokenizer(recipe)
    model = ts.build_model(recipe, tokenizer)
    prompt_ids = ts.text_ids(tokenizer, list(world.prompts), recipe.max_length)  # (C, max_length)

    def loss(batch, pixels):  # train_siglip._train's batch_loss
        captions = torch.from_numpy(batch.target_labels)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            image = model.get_image_features(pixel_values=pixels)
            text = model.get_text_features(input_ids=prompt_ids)
        image, prompts = ts._features(image), ts._features(text)  # (B, D), (C, D)
        scale = model.logit_scale.exp()
        logits = scale * image @ prompts[captions].T + model.logit_bias  # (B, B)
        pairs = ts.sigmoid_loss(logits, positive_matrix(torch.from_numpy(batch.labels), captions))
        return pairs + recipe.prompt_separation * prompt_separation_loss(prompts, scale.detach())

    return recipe, model, loss, lambda batch: ts._prompt_logits(model, recipe, prompt_ids, batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/cue_curve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("vit", "siglip"), required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--initializer-range", type=float, default=0.02, help="vit only (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be at least 1")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    world = ShapesWorld(64, seed=args.seed, mechanism="cue")
    if args.family == "vit":
        recipe, model, batch_loss, scores = vit_parts(world, args.initializer_range)
    else:
        recipe, model, batch_loss, scores = siglip_parts(world)
    held_out = world.single_object_set(300, seed=HELD_OUT_SEED)
    truth = held_out.labels[:, 0]
    optimizer = adamw(model, recipe.learning_rate, recipe.weight_decay)
    model.train()
    cpu, losses = time.process_time(), []
    for step in range(args.steps):
        losses.append(optimisation_step(model, optimizer, world, recipe, step / args.steps, step, batch_loss))
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            predicted = scores(held_out).argmax(1)
            model.train()
            sys.stdout.write(
                f"step {step + 1}: loss {np.mean(losses[-args.every :]):.3f}, "
                f"top-1 {(predicted == truth).mean():.3f}, "
                f"colour {(predicted // len(SHAPES) == truth // len(SHAPES)).mean():.3f}, "
                f"shape {(predicted % len(SHAPES) == truth % len(SHAPES)).mean():.3f} "
                f"({time.process_time() - cpu:.0f} CPU-s)\n"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
