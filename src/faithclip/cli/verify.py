"""``faithclip verify``: Grad-ECLIP == Attention-ECLIP on both towers, and the P1 check of every method."""

from __future__ import annotations

import argparse

import torch

from faithclip.cli.common import (
    DeprecatedAlias,
    add_image_arguments,
    add_method_options_argument,
    add_model_argument,
    add_out_argument,
    add_random_weights_argument,
    add_run_arguments,
    check_writable,
    deprecated_group,
    load_model,
    method_options,
    place_model,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="verify the Grad-ECLIP / Attention-ECLIP equivalence and principle P1",
        description="Explain image-text pairs with Grad-ECLIP and Attention-ECLIP on both towers and print "
        "their largest differences; then check that each method explains the model's own score.",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files (default: scenes of the shapes world for the shapes model, the VOC samples otherwise)",
    )
    parser.add_argument("--text", action="append", default=None, help="texts (default: the model's demo prompts)")
    parser.add_argument(
        "--layers", type=positive_int, action="append", default=None, help="numbers of last layers to compare"
    )
    parser.add_argument("--float64", action="store_true", help="also compare in float64 (on a converted copy)")
    parser.add_argument("--no-p1", action="store_true", help="skip the principle-P1 check of every method")
    add_method_options_argument(parser)
    add_model_argument(parser)
    add_random_weights_argument(
        parser, "the real ViT-B/32 architecture, whose config and the CLIP tokenizer ship with faithclip"
    )
    add_run_arguments(parser)
    add_image_arguments(parser)
    add_out_argument(parser, "verify", optional=True)
    old = deprecated_group(parser)
    old.add_argument(
        "--random-b32", action=DeprecatedAlias, dest="random_weights", nargs=0, const=True, use="--random-weights"
    )
    old.add_argument(
        "--reference", action=DeprecatedAlias, dest="model", metavar="DIR", use="--model DIR --random-weights"
    )
    old.add_argument(
        "--json", action=DeprecatedAlias, default=None, metavar="FILE", use="--out DIR (it writes verify.json there)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faithclip.equivalence import (
        equivalence_tolerance,
        format_table,
        verify_equivalence,
    )
    from faithclip.models.random_init import random_b32
    from faithclip.progress import stage_logger
    from faithclip.verification import default_inputs, input_origin

    json_path = check_writable(args.json, "file", "--json") if args.json else None  # before any work
    out = check_writable(args.out, "dir") if args.out else None
    progress = stage_logger("faithclip verify", not args.no_progress)
    model = place_model(random_b32(args.model), args) if args.random_weights else load_model(args.model, args)
    import faithclip.methods  # noqa: F401  (fills the registry: P1 runs every method)
    from faithclip.registry import METHODS

    # P1 compares scores, not map quality, so RISE runs with few masks here (its explained score does not
    # depend on the number of masks); --method-option adds to or overrides these
    given = method_options(args, METHODS.names(), model)
    p1_options = {
        name: {**({"masks": 64} if name == "rise" else {}), **given.get(name, {})}
        for name in dict.fromkeys(["rise", *given])
    }
    images, texts = default_inputs(model, args.images, args.text)
    dtypes = (model.dtype, torch.float64) if args.float64 else (model.dtype,)  # --dtype: the model's own
    progress(
        f"Grad-ECLIP vs Attention-ECLIP on {len(images)} images x {len(texts)} texts, both towers; images: "
        f"{input_origin(model, args.images)}"
    )
    rows = verify_equivalence(model, images, texts, layers=tuple(args.layers or (1, 2)), dtypes=dtypes)
    print(f"Grad-ECLIP vs Attention-ECLIP on {model.name} ({len(images)} images x {len(texts)} texts)")
    print(format_table(rows))
    record = {"model": model.name, "equivalence": [r.as_dict() for r in rows]}
    failures = []
    failed = [r for r in rows if r.max_rel_diff > equivalence_tolerance(r.dtype)]
    if failed:
        bounds = ", ".join(f"{equivalence_tolerance(d):g} {d}" for d in sorted({r.dtype for r in rows}))
        failures.append(f"{len(failed)} equivalence rows exceed the tolerance ({bounds})")
    if not args.no_p1:
        from faithclip.audit.principles import check_p1, format_p1

        progress("principle P1: every method on one image-text pair (about a minute on a ViT-B)")
        p1_rows = check_p1(model, images[:1], texts[:1], options=p1_options)
        print("\nPrinciple P1: does each method explain the model's own score on the model's own input?")
        print(format_p1(p1_rows))
        record["p1"] = [row.as_dict() for row in p1_rows]
        declared = sorted({r.method for r in p1_rows if not r.passed and (r.modifies_model or r.modifies_input)})
        undeclared = sorted({r.method for r in p1_rows if not r.passed and not (r.modifies_model or r.modifies_input)})
        if declared:
            print(
                f"\nDeclared departures (not failures): {', '.join(declared)} explain another forward or "
                "input, and say so (modifies_model / modifies_input)."
            )
        if undeclared:
            failures.append(f"{', '.join(undeclared)} depart from the model's own score without declaring it")
    record["failures"] = failures
    if json_path is not None:
        from faithclip.explanation import json_bytes, write_atomic

        write_atomic(json_path, json_bytes(record))
    if out is not None:
        from faithclip.report.page import write_report
        from faithclip.report.verify_report import render_verify

        _, page = write_report(out, "verify", record, render_verify(record))
        print(f"\nReport: {page.resolve()}")
    for failure in failures:
        print(f"\nFAILED: {failure}")
    if failures:
        return 1
    declared = sorted(
        {
            row["method"]
            for row in record.get("p1", [])
            if not row["passed"] and (row.get("modifies_model") or row.get("modifies_input"))
        }
    )
    print("\nAll checks passed." + (f" Declared departures (not failures): {', '.join(declared)}." if declared else ""))
    return 0
