"""``faithclip train-shapes``: train the small shapes-world CLIP and save it as a transformers directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys

from faithclip.cli.common import check_writable, non_negative_int, positive_float

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-shapes",
        help="train a small CLIP on the synthetic shapes world (CPU)",
        description="Train a transformers.CLIPModel on generated shape scenes for a fixed time budget "
        "and save it with save_pretrained (model, tokenizer, image processor, TRAINING.json).",
    )
    parser.add_argument("--out", default="./shapes-clip", help="output directory (default: ./shapes-clip)")
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="training time budget (default: 20)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of weights and training scenes (default: 0)")
    # default: ShapesRecipe.threads (not imported here: the training module loads transformers' image
    # processors, which slows every other command's start and prints a torchvision notice)
    parser.add_argument("--threads", type=int, default=None, choices=(1, 2), help="torch CPU threads (default: 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_writable(args.out, "dir")  # before importing the trainer, which takes seconds
    from faithclip.shapes.train_clip import ShapesRecipe, train_shapes

    recipe = ShapesRecipe() if args.threads is None else dataclasses.replace(ShapesRecipe(), threads=args.threads)
    args.threads = recipe.threads
    command = shlex.join(
        ["faithclip", "train-shapes", "--out", str(args.out), "--minutes", f"{args.minutes:g}",
         "--seed", str(args.seed), "--threads", str(args.threads)]
    )  # fmt: skip
    metrics = train_shapes(args.out, args.minutes, seed=args.seed, recipe=recipe, command=command)
    sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
    return 0
