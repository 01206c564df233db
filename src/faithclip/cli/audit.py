"""``faithclip audit``: how far the official Grad-ECLIP pipeline departs from the model, and P2.

    faithclip audit                                        # the shipped shapes model, scenes rendered at 2x
    faithclip audit --ladder --correctness --out audit-run          # audit.json + report.html
    faithclip audit --model ../shared/reference/openai-clip-vit-base-patch32 --random-init \\
        --images ../shared/reference/voc2011-samples/JPEGImages/*.jpg \\
        --class-names ../shared/reference/voc2011-samples/class_names.txt

Every default is ``faithclip.audit.run.AuditSettings()``'s: docs/audit.md names the command behind each
of its tables, and ``python -m faithclip.cli.audit_docs --check`` reruns them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from faithclip.audit.run import AuditSettings
from faithclip.cli.common import (
    add_device_arguments,
    add_image_arguments,
    add_out_argument,
    check_writable,
    load_model,
    place_model,
)
from faithclip.errors import FaithclipError, ModelError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit's arguments; defaults come from ``AuditSettings`` (one set of defaults)."""
    d = AuditSettings()
    parser.add_argument("--model", default=None, help="model name, directory or checkpoint (default: shapes-clip)")
    add_device_arguments(parser)
    add_image_arguments(parser)
    parser.add_argument("--random-init", action="store_true",
                        help="build the model from the directory's config.json with random weights (no weights needed)")
    parser.add_argument("--images", nargs="+", default=None, help="image files (default: shapes scenes)")
    parser.add_argument("--class-names", default=None, help="file of class names, one a line (names starting '_' skipped)")
    parser.add_argument("--template", default="a photo of a {}.", help="prompt template for --class-names")
    parser.add_argument("--scenes", type=int, default=d.scenes, help="single-object shapes scenes (drift, accuracy, P2 b)")
    parser.add_argument("--raw-size", type=int, default=d.raw_size, help="scene render size (default: 2x the model's input)")
    parser.add_argument("--aspect", type=float, default=d.aspect, help="height/width of the scene renders (crop)")
    parser.add_argument("--map-images", type=int, default=d.map_images, help="images whose maps are compared (the first N of the scenes or --images)")
    parser.add_argument("--deletion-steps", type=int, default=d.deletion_steps,
                        help="points per departure deletion curve (default: one per patch)")
    parser.add_argument("--ladder", action="store_true",
                        help="P2: do the maps track the model? (paired test over degraded models, docs/p2.md)")
    parser.add_argument("--p2-scenes", type=int, default=d.p2_scenes, help="P2 scene pairs (the same at every rung)")
    parser.add_argument("--p2-ladders", type=int, default=d.p2_ladders, help="P2 ladders (re-initialisation seeds)")
    parser.add_argument("--p2-rungs", type=int, default=d.p2_rungs,
                        help="P2 rungs per ladder, from the trained model to the first at chance")
    parser.add_argument("--min-effect", type=float, default=d.min_effect,
                        help="P2's pre-registered minimum within-scene association")
    parser.add_argument("--ladder-deletion-steps", type=int, default=d.ladder_deletion_steps,
                        help="points per deletion curve of the correctness split")
    parser.add_argument("--correctness", action="store_true", help="P2 (b): quality split by right / wrong predictions")
    parser.add_argument("--correctness-alphas", type=float, nargs="+", default=list(d.correctness_alphas),
                        help="rungs whose predictions are split (default 0.5: the trained model is almost never wrong)")
    parser.add_argument("--methods", nargs="+", default=None, help="methods for P2 (default: all but rise, m2ib, occlusion)")
    parser.add_argument("--resamples", type=int, default=d.resamples, help="bootstrap resamples (and permutations)")
    parser.add_argument("--confidence", type=float, default=d.confidence, help="bootstrap interval level")
    parser.add_argument("--bootstrap-seed", type=int, default=d.bootstrap_seed)
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="scene seeds seed+1 (single) and seed+2 (P2 pairs); P2 ladders seeded 3 seed, 3 seed + 1, ...")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON to this file")
    parser.add_argument("--html", dest="html_path", default=None, help="also write the self-contained HTML page to this file")
    add_out_argument(parser, "audit", optional=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="measure how far the official Grad-ECLIP pipeline departs from the model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> AuditSettings:
    return AuditSettings(
        scenes=args.scenes, raw_size=args.raw_size, aspect=args.aspect, map_images=args.map_images,
        deletion_steps=args.deletion_steps, ladder=args.ladder, correctness=args.correctness,
        p2_scenes=args.p2_scenes, p2_ladders=args.p2_ladders, p2_rungs=args.p2_rungs, min_effect=args.min_effect,
        ladder_deletion_steps=args.ladder_deletion_steps,
        correctness_alphas=tuple(args.correctness_alphas), methods=tuple(args.methods) if args.methods else None,
        resamples=args.resamples, confidence=args.confidence,
        bootstrap_seed=args.bootstrap_seed, seed=args.seed)


def random_init_handle(directory: str, seed: int):
    """A CLIP of the directory's architecture with random weights, its tokenizer and preprocessing."""
    from faithclip.models.random_init import random_clip

    if not (Path(directory) / "config.json").is_file():
        raise ModelError(f"--random-init needs a directory with config.json; {directory} has none.")
    return random_clip(directory, seed=seed, name=f"{Path(directory).name} (random weights, seed {seed})")


def load_inputs(args: argparse.Namespace):
    """The model handle and, with ``--images``, the image files as audit data."""
    from faithclip.audit.data import folder_data
    if args.random_init and not args.model:
        raise FaithclipError("--random-init needs --model DIRECTORY (a config.json to build from).")
    handle = (place_model(random_init_handle(args.model, args.seed), args) if args.random_init
              else load_model(args.model, args))
    data = None
    if args.images:
        if not args.class_names:
            raise FaithclipError("--images needs --class-names (the prompt set the images are classified against).")
        try:
            lines = Path(args.class_names).read_text().splitlines()
        except OSError as error:
            raise FaithclipError(f"--class-names {args.class_names}: {error.strerror}.") from error
        names = [n.strip() for n in lines if n.strip() and not n.startswith("_")]
        data = folder_data(args.images, [args.template.format(n) for n in names])
    return handle, data


def run(args: argparse.Namespace) -> int:
    from faithclip.audit.report import audit_page, format_audit
    from faithclip.audit.run import run_audit
    from faithclip.explanation import json_bytes, write_atomic
    from faithclip.report.page import write_report

    settings = settings_from_args(args)
    settings.validate()
    json_path = check_writable(args.json_path, "file", "--json") if args.json_path else None
    html_path = check_writable(args.html_path, "file", "--html") if args.html_path else None
    out = check_writable(args.out, "dir", "--out") if args.out else None
    torch.set_num_threads(1)  # shared CPUs: one thread avoids busy-waiting worker threads
    handle, data = load_inputs(args)
    results = run_audit(handle, settings, data)
    print(format_audit(results))
    record = json.loads(json.dumps(results, default=str))
    if json_path:
        write_atomic(json_path, json_bytes(record))
        logger.info("wrote %s", json_path)
    if html_path:
        write_atomic(html_path, audit_page(record).encode())
        logger.info("wrote %s", html_path)
    if out:
        paths = write_report(out, "audit", record, audit_page(record))
        logger.info("wrote %s and %s", *paths)
    return 0
