"""``faithclip train-shapes``: train a small shapes-world stand-in model (CLIP, ViT classifier or SigLIP)
and save it as a transformers directory."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import shlex
import sys

from faithclip.cli.common import check_writable, non_negative_int, positive_float
from faithclip.errors import FaithclipError

logger = logging.getLogger(__name__)

MECHANISMS = ("objects", "colour", "cue", "ignore-shape")

# family -> (training module, recipe class, training function); the modules load transformers, so they
# are imported only when the command runs.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "clip": ("faithclip.shapes.train_clip", "ShapesRecipe", "train_shapes"),
    "vit": ("faithclip.shapes.train_vit", "ViTRecipe", "train_vit"),
    "siglip": ("faithclip.shapes.train_siglip", "SiglipRecipe", "train_siglip"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-shapes",
        help="train a small CLIP, ViT classifier or SigLIP on the synthetic shapes world (CPU)",
        description="Train a transformers.CLIPModel (--family clip), ViTForImageClassification (vit) or "
        "SiglipModel (siglip) on generated shape scenes for a fixed time budget and save it with "
        "save_pretrained (model, tokenizer if any, image processor, TRAINING.json).",
    )
    parser.add_argument(
        "--family", default="clip", choices=tuple(FAMILIES), help="which model to train (default: %(default)s)"
    )
    parser.add_argument("--out", default=None, help="output directory (default: ./shapes-FAMILY)")
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="training time budget (default: 20)")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of weights and training scenes (default: 0)"
    )
    # default: ShapesRecipe.threads (not imported here: the training module loads transformers' image
    # processors, which slows every other command's start and prints a torchvision notice)
    parser.add_argument("--threads", type=int, default=None, choices=(1, 2), help="torch CPU threads (default: 1)")
    # Spelled out, not imported from shapes.world (which pulls in numpy and PIL only, but the CLI's
    # help must not depend on it); a test keeps the two equal.
    parser.add_argument(
        "--mechanism",
        default="objects",
        choices=MECHANISMS,
        help="what the captions can be learned from: objects (the default world), colour (the "
        "shape is uninformative), cue (a corner marker, not the object), ignore-shape (rings are "
        "never named); see docs/p2.md, 'Planted mechanisms' (default: %(default)s)",
    )
    parser.add_argument(
        "--initializer-range",
        type=positive_float,
        default=None,
        metavar="STD",
        help="--family vit only: std of the truncated-normal weight initialisation (transformers' "
        "ViTConfig.initializer_range; default 0.02, every shipped model's). 0.08 lets the classifier learn "
        "the cue world's one-patch cue within minutes; see docs/p2.md, 'The ViT classifier'",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.initializer_range is not None and args.family != "vit":
        raise FaithclipError(f"--initializer-range applies to --family vit only, not {args.family}; drop it")
    if args.out is None:
        args.out = f"./shapes-{args.family}"
    check_writable(args.out, "dir")  # before importing the trainer, which takes seconds
    module_name, recipe_name, train_name = FAMILIES[args.family]
    module = importlib.import_module(module_name)
    recipe = getattr(module, recipe_name)()
    if args.threads is not None:
        recipe = dataclasses.replace(recipe, threads=args.threads)
    if args.initializer_range is not None:
        recipe = dataclasses.replace(recipe, initializer_range=args.initializer_range)
    args.threads = recipe.threads
    family = [] if args.family == "clip" else ["--family", args.family]  # clip's command reads as before
    mechanism = [] if args.mechanism == "objects" else ["--mechanism", args.mechanism]
    initializer = [] if args.initializer_range is None else ["--initializer-range", f"{args.initializer_range:g}"]
    command = shlex.join(
        ["faithclip", "train-shapes", *family, "--out", str(args.out), "--minutes", f"{args.minutes:g}",
         "--seed", str(args.seed), "--threads", str(args.threads), *mechanism, *initializer]
    )  # fmt: skip
    train = getattr(module, train_name)
    metrics = train(args.out, args.minutes, seed=args.seed, recipe=recipe, command=command, mechanism=args.mechanism)
    sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
    return 0
