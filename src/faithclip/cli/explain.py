"""``faithclip explain IMAGE... --text T...``: maps, overlays and JSON records for every image-text pair."""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from pathlib import Path

from faithclip.cli.common import (
    CommaList,
    DeprecatedAlias,
    add_image_arguments,
    add_method_options_argument,
    add_model_argument,
    add_out_argument,
    add_run_arguments,
    check_writable,
    deprecated_group,
    load_model,
    method_options,
    names,
    positive_int,
    slug,
)
from faithclip.errors import FaithclipError, MethodError
from faithclip.files import write_atomic
from faithclip.models.images import check_image_file
from faithclip.registry import METHODS
from faithclip.report.colour import SCALES
from faithclip.report.figures import FORMATS, VIEWS
from faithclip.targets import NO_OTHER_TEXTS, TARGET_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    import faithclip.methods  # noqa: F401  (fills the registry, the single source of method names)

    parser = subparsers.add_parser(
        "explain",
        help="explain image-text pairs with a method",
        description="Write a figure (PNG: the map on the image at its own resolution, "
        "the model's crop outlined, a raw-value colour bar) and a JSON "
        "record per image-text pair, and explain.json + report.html.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--text", action="append", required=True, help="text to explain (repeat for several)")
    parser.add_argument(
        "--methods",
        action=CommaList,
        default=None,
        metavar="M[,M...]",
        help="the method, or a comma list of methods drawn side by side "
        f"(default attention_eclip; one of {', '.join(METHODS.names())})",
    )
    add_method_options_argument(parser)
    parser.add_argument("--side", default="image", choices=("image", "text"), help="explain the image or the text")
    parser.add_argument(
        "--target",
        default=None,
        choices=TARGET_KINDS,
        help="the score explained (default: the model family's own: cosine for CLIP and BLIP, "
        "logit for SigLIP and ViT classifiers; BLIP also: itm, its image-text matching "
        "probability, and itm_log_odds, image side only)",
    )
    parser.add_argument(
        "--other",
        action="append",
        default=[],
        help="other prompts of the set (probability, repeat for each) or the one contrasting "
        "text (contrast); not used by cosine or logit",
    )
    parser.add_argument(
        "--layers", type=positive_int, default=None, help="number of last layers (methods that take it)"
    )
    add_model_argument(parser)
    add_run_arguments(parser)
    add_image_arguments(parser)
    add_out_argument(parser, "explain", holds="a PNG figure and a JSON record per pair")
    parser.add_argument(
        "--format",
        default="png",
        choices=FORMATS,
        help="figure files: png (300 dpi), or pdf / svg (vector, for papers)",
    )
    parser.add_argument(
        "--scale",
        default="shared",
        choices=SCALES,
        help="colour scales: shared (default; one per method: its maps of every prompt compare by "
        "colour), all (one for every map, for methods whose units agree), per_map",
    )
    parser.add_argument(
        "--view",
        default="overlay",
        choices=VIEWS,
        help="how a map is drawn on the image: overlay (default), contour lines, or masked image",
    )
    parser.add_argument(
        "--save-maps",
        action="store_true",
        help="also write each raw patch-grid map as <stem>.npz (format: docs/interop.md)",
    )
    deprecated_group(parser).add_argument(
        "--method", action=DeprecatedAlias, dest="methods", type=names, use="--methods M[,M...]", metavar="M[,M...]"
    )
    parser.set_defaults(func=run)


def check_family(model, method: str, side: str) -> None:
    """The method and side exist for the model's family (the same checks ``faithclip.explain`` makes)."""
    from faithclip.api import method_for

    spec = method_for(model, method, side)
    if side not in spec.sides_on(model.family):
        raise MethodError(
            f"{method} has no {side} side on {model.family.name} models; use --side "
            f"{' or '.join(spec.sides_on(model.family)) or 'image'}."
        )


def method_list(given: list[str] | None) -> list[str]:
    """``--methods a,b,c`` (already split, ``CommaList``) as a list of registered names, without repeats."""
    if given is None:
        return ["attention_eclip"]
    chosen = unique(given)
    unknown = [name for name in chosen if name not in METHODS.names()]
    if unknown or not chosen:
        raise MethodError(
            f"unknown method {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS.names())}"
        )
    return chosen


def check_target(target: str, others: list[str], texts: list[str] = ()) -> None:
    """The ``--target`` / ``--other`` combination in the command line's words (before anything is loaded)."""
    from faithclip.api import check_others

    check_others(texts, others)
    if (target is None or target in NO_OTHER_TEXTS) and others:
        raise MethodError(
            f"--other is not used by --target {target or '(default)'}; remove it, or use --target contrast "
            "(one --other) or --target probability (the other prompts of the set)."
        )
    if target == "contrast" and len(others) != 1:
        raise MethodError(
            f"--target contrast needs exactly one --other TEXT to contrast with (got {len(others)}), "
            "e.g. --other 'a blue square'."
        )


def unique(items: list[str], key=lambda item: item) -> list[str]:
    """``items`` without repeats (by ``key``), in order."""
    seen, kept = set(), []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            kept.append(item)
    return kept


def output_stems(images: list[str], texts: list[str], method: str) -> dict[tuple[str, str], str]:
    """A distinct file stem per (image, text) pair: ``<image stem>__<text slug>__<method>``, and where two
    pairs would share it (``a/x.png`` and ``b/x.png``; "a cat" and "A CAT"; names that differ only in case,
    which collide on case-insensitive file systems) each gets ``__<8 hex digits>`` of its image path and
    exact text, so a pair keeps its name from run to run whatever else is explained with it."""
    base = {(image, text): f"{Path(image).stem}__{slug(text)}__{method}" for image in images for text in texts}
    counts = Counter(stem.lower() for stem in base.values())
    stems = {}
    for (image, text), stem in base.items():
        if counts[stem.lower()] > 1:
            digest = hashlib.sha1(f"{Path(image).resolve()}\0{text}".encode()).hexdigest()[:8]
            stem = f"{stem}__{digest}"
        stems[(image, text)] = stem
    return stems


def run(args: argparse.Namespace) -> int:
    from faithclip.api import explain, explain_text, family_target, method_spec
    from faithclip.progress import stage_logger

    methods = method_list(args.methods)
    check_target(args.target, args.other, args.text)
    if args.save_maps and args.side != "image":
        raise MethodError(
            "--save-maps writes image maps; drop it for --side text (the token map is in the JSON record)."
        )
    for path in args.images:  # each a readable image file within --max-pixels: one line naming it if not (a
        check_image_file(path)  # loop, a directory ...), before the model is loaded
    out = check_writable(args.out, "dir")  # created when the first file is written
    texts = unique(args.text)
    images = unique(args.images, key=lambda p: Path(p).resolve())
    for dropped, kind in ((len(args.text) - len(texts), "--text"), (len(args.images) - len(images), "image")):
        if dropped:
            print(f"note: {dropped} repeated {kind} argument(s) explained once")
    # Progress lines come only once work is under way: a usage error stays the one line on stderr.
    progress = stage_logger("faithclip explain", not args.no_progress)
    model = load_model(args.model, args)
    for method in methods:  # before any image is read: one line, not one per image
        check_family(model, method, args.side)
    if args.target == "probability" and not args.other and model.family.probability_over_prompts:
        raise MethodError("--target probability needs the other prompts of the set: add --other TEXT for each.")
    chosen = family_target(model, args.target, args.other)  # the family has it (BLIP's ITM: and its head)
    for method in methods:  # ... and each method explains it (a class-token method refuses ITM, saying why)
        method_spec(method, args.side).check_target(chosen, args.side, model.family.name)
    from faithclip.api import tower_layers

    options = {} if args.layers is None else {"layers": args.layers}
    # each method, its options (is --layers one of them? within the tower?) and every text usable before any work ...
    for method in methods:
        method_spec(method, args.side).check_options(
            args.side, options, spelled=lambda key: f"--{key}", layers=tower_layers(model, args.side)
        )
    per_method = method_options(args, methods, model, args.side)  # --method-option, checked the same way
    model.tokens(texts)
    for path in images:  # ... and every image readable
        model.decoded(path)
    run_side = explain if args.side == "image" else explain_text
    results = []  # (image, method, [explanation per text])
    for number, image_path in enumerate(images, 1):
        for method in methods:
            if METHODS.get(method).slow:  # told before each image, not after
                progress(
                    f"{method} on {image_path} ({number}/{len(images)} images, {len(texts)} texts): "
                    "a perturbation method, seconds per map"
                )
            try:  # the path itself, so that the record names it and what was done with its EXIF orientation
                explained = run_side(
                    model,
                    [image_path],
                    list(texts),
                    method,
                    target=args.target,
                    others=args.other,
                    **{**options, **per_method.get(method, {})},
                )
            except FaithclipError as error:
                raise type(error)(f"{image_path}: {error}") from error
            results.append((image_path, method, list(explained)))
        progress(f"{image_path} done ({number}/{len(images)} images)")
    # Written only once everything is computed: an input error never leaves part of the outputs behind.
    progress("writing figures")
    index, figures = write_outputs(results, images, texts, methods, out, args)
    from faithclip.report.explain_report import render_explain
    from faithclip.report.page import write_report

    record = {
        "model": model.name,
        "methods": methods,
        "side": args.side,
        "target": args.target or model.family.default_target_kind,
        "others": args.other,
        "options": options,
        "method_options": per_method,
        "format": args.format,
        "scale": args.scale,
        "view": args.view,
        "figures": [{k: v for k, v in f.items() if k != "preview"} for f in figures],
        "explanations": index,
    }
    _, page = write_report(out, "explain", record, render_explain(record, figures))
    print(f"Report: {page.resolve()}")
    return 0


def _image_size(explanation) -> tuple[int, int] | None:
    """``(height, width)`` of the image as read, for the saved map's metadata."""
    image = explanation.source_image
    return None if image is None else (image.height, image.width)


def write_outputs(
    results: list, images: list[str], texts: list[str], methods: list[str], out: Path, args: argparse.Namespace
) -> tuple[list[dict], list[dict]]:
    """A JSON record per (image, text, method) and the figures: with one method, a figure per pair; with
    several, for each image a grid (a row per method, a column per prompt, each method's maps on one colour
    scale). Returns the index entries and the figures (file, colour scales, a PNG preview for the page)."""
    from faithclip.report.figures import comparison_figure, explanation_figure

    index, figures = [], []
    for image_path in images:
        by_method = {method: explained for path, method, explained in results if path == image_path}
        for method in methods:
            stems = output_stems(images, texts, method)
            for text, explanation in zip(texts, by_method[method]):
                stem = stems[(image_path, text)]
                index.append(write_pair(explanation, image_path, text, method, stem, out, args))
                if len(methods) == 1 or args.side == "text":  # a figure per pair
                    figure = (
                        explanation_figure(explanation, view=args.view)
                        if args.side == "image"
                        else explanation.figure()
                    )
                    index[-1]["figure"] = f"{stem}.{args.format}"
                    title = f'{image_path}: "{text}" ({method})'
                    figures.append(save_figure(figure, stem, title, [len(index) - 1], index, out, args))
        if len(methods) > 1 and args.side == "image":
            grid = comparison_figure(
                [e for method in methods for e in by_method[method]], scale=args.scale, view=args.view
            )
            stem = grid_stem(image_path, images, methods)
            members = list(range(len(index) - len(methods) * len(texts), len(index)))
            for member in members:
                index[member]["figure"] = f"{stem}.{args.format}"
            title = f"{image_path}: {', '.join(methods)} x {len(texts)} prompt(s)"
            figures.append(save_figure(grid, stem, title, members, index, out, args))
    return index, figures


def write_pair(
    explanation, image_path: str, text: str, method: str, stem: str, out: Path, args: argparse.Namespace
) -> dict:
    """One pair's JSON (and ``--save-maps``' .npz), its line on stdout with its warnings; its index entry."""
    explanation.save_json(out / f"{stem}.json")
    if args.save_maps:
        from faithclip.data.maps import write_map

        write_map(
            out,
            image_path,
            method,
            explanation.map,
            "patch",
            stem=stem,
            text=text,
            model=explanation.model_id,
            region=explanation.region,
            image_size=_image_size(explanation),
        )
    line = f"{image_path}  {text!r}  {method}  {explanation.target}={explanation.score:+.4f}"
    entry = {
        "image": image_path,
        "text": text,
        "method": method,
        "target": explanation.target,
        "score": explanation.score,
        "model_score": explanation.model_score,
        "json": f"{stem}.json",
        "warnings": explanation.warnings,
    }
    if args.side == "text":
        tokens = explanation.tokens or []
        weights = " ".join(f"{t}:{w:.2f}" for t, w in zip(tokens, explanation.map.tolist()) if w > 0)
        line += f"  [{weights}]  -> {out / (stem + '.json')}"
    print(line)
    for note in explanation.warnings:
        print(f"  warning: {note}")
    return entry


def grid_stem(image_path: str, images: list[str], methods: list[str]) -> str:
    """The file stem of an image's several-method grid; images sharing a stem get their path's hash too."""
    stem = f"{Path(image_path).stem}__{'+'.join(methods)}"
    if len(images) != len({Path(p).stem.lower() for p in images}):
        stem += "__" + hashlib.sha1(str(Path(image_path).resolve()).encode()).hexdigest()[:8]
    return stem


def save_figure(
    figure, stem: str, title: str, members: list[int], index: list[dict], out: Path, args: argparse.Namespace
) -> dict:
    """Write a figure in ``--format``; its page entry: file, title, colour scales, a PNG preview, members."""
    from faithclip.report.figures import SCREEN_DPI, figure_bytes

    path = out / f"{stem}.{args.format}"
    write_atomic(path, figure_bytes(figure, args.format))
    preview = path.read_bytes() if args.format == "png" else figure_bytes(figure, "png", dpi=SCREEN_DPI)
    scales = [
        dict(scale.as_dict(), explanation=member, method=index[member]["method"])
        for scale, member in zip(getattr(figure, "colour_scales", []), members)
    ]
    print(f"  figure -> {path}")
    return {"file": path.name, "title": title, "colour_scales": scales, "preview": preview, "explanations": members}
