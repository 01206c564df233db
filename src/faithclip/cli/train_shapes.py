"""``faithclip train-shapes``: train the small shapes-world CLIP and save it as a transformers directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys

from faithclip.models.train_shapes import ShapesRecipe, TrainingError, train_shapes

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-shapes",
        help="train a small CLIP on the synthetic shapes world (CPU)",
        description="Train a transformers.CLIPModel on generated shape scenes for a fixed time budget "
        "and save it with save_pretrained (model, tokenizer, image processor, TRAINING.json).",
    )
    parser.add_argument("--out", default="./shapes-clip", help="output directory (default: ./shapes-clip)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and training scenes (default: 0)")
    parser.add_argument(
        "--threads", type=int, default=ShapesRecipe.threads, choices=(1, 2), help="torch CPU threads"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.minutes is None or not args.minutes > 0:
        raise TrainingError(f"--minutes must be positive, got {args.minutes}; e.g. --minutes 20")
    recipe = dataclasses.replace(ShapesRecipe(), threads=args.threads)
    command = shlex.join(
        ["faithclip", "train-shapes", "--out", str(args.out), "--minutes", f"{args.minutes:g}",
         "--seed", str(args.seed), "--threads", str(args.threads)]
    )  # fmt: skip
    metrics = train_shapes(args.out, args.minutes, seed=args.seed, recipe=recipe, command=command)
    sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
    return 0
