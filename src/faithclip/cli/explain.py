"""``faithclip explain IMAGE... --text T...``: maps, overlays and JSON records for every image-text pair."""

from __future__ import annotations

import argparse
from pathlib import Path

from faithclip.cli.common import add_model_argument, output_dir, slug
from faithclip.registry import METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    import faithclip.methods  # noqa: F401  (fills the registry, the single source of method names)

    parser = subparsers.add_parser("explain", help="explain image-text pairs with a method",
                                   description="Write an overlay PNG and a JSON record per image-text pair.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--text", action="append", required=True, help="text to explain (repeat for several)")
    parser.add_argument("--method", default="attention_eclip", choices=METHODS.names())
    parser.add_argument("--side", default="image", choices=("image", "text"), help="explain the image or the text")
    parser.add_argument("--target", default="cosine", choices=("cosine", "logit", "probability", "contrast"))
    parser.add_argument("--other", action="append", default=[],
                        help="other prompts of the set (probability) or the contrasting text (contrast)")
    parser.add_argument("--layers", type=int, default=None, help="number of last layers (methods that take it)")
    add_model_argument(parser)
    parser.add_argument("--out", default="faithclip-explain", help="output directory (default: ./faithclip-explain)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import faithclip

    out = output_dir(args.out)
    model = faithclip.load(args.model)
    options = {} if args.layers is None else {"layers": args.layers}
    run_side = faithclip.explain if args.side == "image" else faithclip.explain_text
    for image_path in args.images:
        image = model.decoded(image_path)
        crop = model.preprocess.crop_image(image)  # the pixels the model sees, under its own pipeline's rules
        results = run_side(model, image, list(args.text), args.method, target=args.target, others=args.other, **options)
        for text, explanation in zip(args.text, results):
            stem = f"{Path(image_path).stem}__{slug(text)}__{args.method}"
            explanation.save_json(out / f"{stem}.json")
            line = f"{image_path}  {text!r}  {args.method}  {explanation.target}={explanation.score:+.4f}"
            if args.side == "image":
                explanation.save_overlay(out / f"{stem}.png", crop)
                line += f"  -> {out / (stem + '.png')}"
            else:
                tokens = explanation.tokens or []
                weights = " ".join(f"{t}:{w:.2f}" for t, w in zip(tokens, explanation.map.tolist()) if w > 0)
                line += f"  [{weights}]"
            print(line)
            for note in explanation.warnings:
                print(f"  warning: {note}")
    return 0
