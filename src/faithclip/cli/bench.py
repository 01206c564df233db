"""``faithclip bench``: cost of explaining relative to a plain forward (see faithclip.bench)."""

from __future__ import annotations

import argparse
import platform

from faithclip.cli.common import (
    DeprecatedAlias,
    add_out_argument,
    add_run_arguments,
    check_writable,
    deprecated_group,
    positive_int,
    progress_printer,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure explanation cost as ratios to a plain forward",
        description="Times and peak memory of explaining on the ViT-B/16 and B/32 "
        "architectures (random weights), as ratios to a no-grad forward.",
    )
    parser.add_argument("--arch", action="append", choices=("B/16", "B/32"), default=None)
    parser.add_argument(
        "--k", type=positive_int, nargs="+", default=None, help="prompt counts, e.g. --k 1 10 (default 1 10 100 1000)"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per item (default 5)")
    parser.add_argument("--rise-masks", type=positive_int, default=400, help="RISE masks per map (the paper uses 4000)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="directory with another CLIP config.json and tokenizer, built with random weights "
        "(default: the shipped ViT-B/32 and B/16 configs)",
    )
    add_run_arguments(parser)
    add_out_argument(parser, "bench")
    old = deprecated_group(parser)
    old.add_argument("--reference", action=DeprecatedAlias, dest="model", metavar="DIR", use="--model DIR")
    old.add_argument(
        "--json", action=DeprecatedAlias, default=None, metavar="FILE", use="--out DIR (it writes bench.json there)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from faithclip import bench
    from faithclip.explanation import json_bytes, write_atomic

    json_path = check_writable(args.json, "file", "--json") if args.json else None  # before minutes of timing
    out = check_writable(args.out, "dir")
    from faithclip.models.loading import parse_device

    parse_device(args.device)  # a missing GPU is a one-line error before minutes of timing
    rows = bench.run(
        tuple(args.arch or ("B/16", "B/32")),
        tuple(args.k or (1, 10, 100, 1000)),
        args.repeats,
        args.rise_masks,
        not args.no_memory,
        args.model,
        progress=progress_printer(args),
        device=args.device,
        dtype=args.dtype,
    )
    machine = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"\n{machine}")
    print(bench.format_rows(rows))
    if json_path is not None:
        write_atomic(json_path, json_bytes([r.__dict__ for r in rows]))
    from faithclip.report.bench_report import render_bench
    from faithclip.report.page import write_report

    record = {"machine": machine, "rows": [r.__dict__ for r in rows]}
    _, page = write_report(out, "bench", record, render_bench(record, bench.RATIO_NOTE))
    print(f"Report: {page.resolve()}")
    return 0
