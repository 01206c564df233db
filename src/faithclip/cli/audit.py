"""``faithclip audit``: how far the official Grad-ECLIP pipeline departs from the model, and P2.

    faithclip audit                                        # the shipped shapes model, scenes rendered at 2x
    faithclip audit --ladder --correctness --json a.json --html a.html
    faithclip audit --model ../shared/reference/openai-clip-vit-base-patch32 --random-init \\
        --images ../shared/reference/voc2011-samples/JPEGImages/*.jpg \\
        --class-names ../shared/reference/voc2011-samples/class_names.txt
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from faithclip.errors import FaithclipError, ModelError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="measure how far the official Grad-ECLIP pipeline departs from the model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name, directory or checkpoint (default: shapes-clip)")
    parser.add_argument("--random-init", action="store_true",
                        help="build the model from the directory's config.json with random weights (no weights needed)")
    parser.add_argument("--images", nargs="+", default=None, help="image files (default: shapes scenes)")
    parser.add_argument("--class-names", default=None, help="file of class names, one a line (names starting '_' skipped)")
    parser.add_argument("--template", default="a photo of a {}.", help="prompt template for --class-names")
    parser.add_argument("--scenes", type=int, default=200, help="single-object shapes scenes (accuracy, drift)")
    parser.add_argument("--raw-size", type=int, default=None, help="scene render size (default: 2x the model's input)")
    parser.add_argument("--aspect", type=float, default=1.0, help="height/width of the scene renders (crop)")
    parser.add_argument("--map-images", type=int, default=16, help="images whose maps are compared")
    parser.add_argument("--deletion-steps", type=int, default=None, help="points per deletion curve (default: per patch)")
    parser.add_argument("--ladder", action="store_true", help="P2 (a): the performance ladder")
    parser.add_argument("--alphas", type=float, nargs="+", default=None, help="ladder rungs (0 = trained)")
    parser.add_argument("--pointing-scenes", type=int, default=40, help="multi-object scenes per ladder rung")
    parser.add_argument("--correctness", action="store_true", help="P2 (b): quality split by right / wrong predictions")
    parser.add_argument("--methods", nargs="+", default=None, help="methods for P2 (default: all but rise, m2ib, occlusion)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="write the results as JSON")
    parser.add_argument("--html", dest="html_path", default=None, help="write the HTML section")
    parser.set_defaults(func=run)


def random_init_handle(directory: str, seed: int):
    """A CLIP of the directory's architecture with random weights, its tokenizer and preprocessing."""
    from faithclip.models.random_init import random_clip

    if not (Path(directory) / "config.json").is_file():
        raise ModelError(f"--random-init needs a directory with config.json; {directory} has none.")
    return random_clip(directory, seed=seed, name=f"{Path(directory).name} (random weights, seed {seed})")


def run(args: argparse.Namespace) -> int:
    from faithclip.audit.data import folder_data, shapes_data
    from faithclip.audit.departure import audit_departure
    from faithclip.audit.ladder import (
        LadderConfig,
        correctness_split,
        performance_ladder,
    )
    from faithclip.audit.report import audit_html, format_audit
    from faithclip.explanation import write_atomic
    from faithclip.models.loading import load

    torch.set_num_threads(1)  # shared CPUs: one thread avoids busy-waiting worker threads
    handle = random_init_handle(args.model, args.seed) if args.random_init else load(args.model)
    raw_size = args.raw_size or 2 * handle.image_size
    if args.images:
        if not args.class_names:
            raise FaithclipError("--images needs --class-names (the prompt set the images are classified against).")
        names = [n.strip() for n in Path(args.class_names).read_text().splitlines() if n.strip() and not n.startswith("_")]
        data = folder_data(args.images, [args.template.format(n) for n in names])
    else:
        data = shapes_data(args.scenes, raw_size=raw_size, seed=args.seed + 1, aspect=args.aspect)
    results = audit_departure(handle, data, map_images=args.map_images, deletion_steps=args.deletion_steps)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "func"}
    if args.ladder or args.correctness:
        if data.labels is None or data.masks is None:
            raise FaithclipError("the ladder and --correctness need labelled scenes with masks: run without --images.")
        pointing = shapes_data(args.pointing_scenes, raw_size=raw_size, seed=args.seed + 2, kind="multi")
        if args.ladder:
            config = LadderConfig(alphas=tuple(args.alphas) if args.alphas else LadderConfig.alphas, seed=args.seed)
            results["ladder"] = performance_ladder(handle, data, pointing, args.methods, config)
        if args.correctness:
            results["correctness"] = correctness_split(handle, data, args.methods)
    print(format_audit(results))
    if args.json_path:
        write_atomic(Path(args.json_path), json.dumps(results, indent=1, default=str).encode())
        logger.info("wrote %s", args.json_path)
    if args.html_path:
        write_atomic(Path(args.html_path), audit_html(results).encode())
        logger.info("wrote %s", args.html_path)
    return 0
