"""``faithclip evaluate``: methods x metrics on a labelled image set, resumable, with a report.

    faithclip evaluate --data shapes --methods grad_eclip,attention_eclip --out runs/shapes
    faithclip evaluate --model DIR --data voc:PATH --metrics pointing_game,energy_pointing_game --out runs/voc

Running the same command again on the same ``--out`` resumes an interrupted run. One run at a time
uses a folder; a run with other settings, model or data is refused. If records.jsonl was damaged (a
crash, an edit), add --repair to drop the damaged lines and compute those records again.

Many processes (each with the same options, --threads included):

    torchrun --nproc-per-node 4 -m faithclip evaluate ... --out DIR          # rank 0 writes the results
    faithclip evaluate ... --shard I/4 --out DIR        # job arrays: I = 0..3, then
    faithclip evaluate ... --merge [DIR2 ...] --out DIR # merge (computes nothing)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from faithclip.cli.common import (
    CommaList,
    add_image_arguments,
    add_method_options_argument,
    add_model_argument,
    add_run_arguments,
    check_writable,
    load_model,
    note_deprecated,
    parse_dotted,
)
from faithclip.evaluation import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    EvalConfig,
    EvaluationError,
    Shard,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from faithclip.metrics import METRICS

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate explanation methods with faithfulness, localisation and sanity metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    add_run_arguments(parser)
    add_image_arguments(parser)
    parser.add_argument(
        "--data",
        default="shapes",
        help="'shapes' (the generated world, fixed evaluation seed), 'voc:PATH', 'imagenet:PATH' "
        "or a folder whose layout is detected (default: shapes)",
    )
    parser.add_argument(
        "--methods",
        default=list(DEFAULT_METHODS),
        action=CommaList,
        metavar="M[,M...]",
        help=f"comma-separated method names, or 'all' (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--metrics",
        default=list(DEFAULT_METRICS),
        action=CommaList,
        metavar="M[,M...]",
        help=f"comma-separated, or 'all'; choose from {', '.join(METRICS.names())} "
        f"(default: {','.join(DEFAULT_METRICS)})",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--count", type=int, default=100, help="number of generated scenes for --data shapes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random perturbations and the bootstrap")
    parser.add_argument("--batch-size", type=int, default=32, help="perturbed images scored per forward pass")
    parser.add_argument(
        "--images-per-step",
        type=int,
        default=1,
        action=NoEffect,
        help="deprecated, no effect (goes in the next release): the perturbed images of consecutive images "
        "are always streamed into full forwards of --batch-size images",
    )
    parser.add_argument("--examples", type=int, default=4, help="images shown with overlays in the report")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METRIC.KEY=VALUE",
        help="a metric option, e.g. pointing_game.tolerance=4 or deletion_rise.substrate=black "
        "(repeatable; it is added to the metric's protocol label)",
    )
    add_method_options_argument(parser)
    parser.add_argument(
        "--repair",
        action="store_true",
        help="drop damaged lines of records.jsonl (named by the error) and compute those records again",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="compute only the cases at positions I, I+N, I+2N, ... into records.shard-I-of-N.jsonl "
        "(one job of a job array; the results are written by --merge)",
    )
    parser.add_argument(
        "--merge",
        nargs="*",
        default=None,
        metavar="DIR",
        help="compute nothing: check and merge the shards' records in --out and in these other run "
        "folders of the same command, then write the results into --out",
    )
    parser.add_argument(
        "--maps",
        default=None,
        metavar="DIR",
        help="score precomputed maps, one <case>__<method>.npy/.npz per case and method (format: "
        "docs/interop.md), instead of running methods; their bytes join the run identity",
    )
    parser.add_argument(
        "--save-maps",
        action="store_true",
        help="also write every computed map to OUT/maps/<case>__<method>.npz (readable by --maps)",
    )
    parser.add_argument("--out", required=True, help="output directory (records.jsonl, results.json/.md, report.html)")
    parser.set_defaults(func=run)


class NoEffect(argparse.Action):
    """An option that no longer does anything, kept for one release so that old commands still run; it
    leaves a one-line notice."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        note_deprecated(
            namespace,
            f"{option_string} has no effect and goes in the next release: the perturbed images of consecutive "
            "images are streamed into full forwards of --batch-size images; drop it",
        )
        setattr(namespace, self.dest, values)


def parse_options(items: list[str], flag: str = "--option") -> dict[str, dict[str, Any]]:
    """``["pointing_game.tolerance=4"]`` -> ``{"pointing_game": {"tolerance": 4}}`` (values read as JSON if they parse)."""
    return parse_dotted(items, flag, EvaluationError)


def run(args: argparse.Namespace) -> int:
    from faithclip.data.folders import open_data
    from faithclip.evaluation import Evaluator

    for name in ("limit", "count", "batch_size", "images_per_step"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
    out = check_writable(
        args.out, "dir", "--out"
    )  # creates nothing: the run creates it, and removes it if it fails early
    metric_options = parse_options(args.option)
    method_options = parse_options(args.method_option, "--method-option")
    if args.maps is not None and args.save_maps:
        raise EvaluationError(
            "--save-maps writes the maps the methods compute; with --maps none are computed. Give one."
        )
    shard = Shard.parse(args.shard) if args.shard is not None else None
    if shard is not None and args.merge is not None:
        raise EvaluationError("--shard computes one shard and --merge merges finished ones; give one of them.")
    from faithclip.evaluation import shards

    if shards.launched() and (shard is not None or args.merge is not None):
        raise EvaluationError(
            "under torchrun every rank evaluates its own shard and rank 0 merges; drop --shard and --merge."
        )
    args.device = shards.rank_device(args.device)
    handle = load_model(args.model, args)
    config = EvalConfig(
        model=args.model or "shapes-clip",
        data=args.data,
        methods=args.methods,
        metrics=args.metrics,
        limit=args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        examples=args.examples,
        metric_options=metric_options,
        method_options=method_options,
        images_per_step=args.images_per_step,
        maps=args.maps,
        save_maps=args.save_maps,
    )
    evaluator = Evaluator(handle, config)  # checks methods, metrics and every option
    data = open_data(args.data, image_size=handle.preprocess.size, count=args.count)
    try:
        if shards.launched():
            results = _run_ranks(evaluator, data, out, args)
            if results is None:
                return 0  # not rank 0: its shard is written; rank 0 reports
        elif args.merge is not None:
            results = evaluator.merge(data, out, args.merge, progress=not args.no_progress, repair=args.repair)
        elif shard is not None:
            evaluator.run(data, out, progress=not args.no_progress, repair=args.repair, shard=shard)
            print(
                f"shard {shard} finished in {out}; when every shard has, run the same command with --merge "
                "instead of --shard to write the results"
            )
            return 0
        else:
            results = evaluator.run(data, out, progress=not args.no_progress, repair=args.repair)
    except KeyboardInterrupt:
        print("faithclip evaluate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    logger.info("wrote %s/results.json, results.md and report.html (%d records)", args.out, len(results["per_image"]))
    from faithclip.report.evaluation_report import render_markdown

    print(render_markdown(results).split("## Protocols")[0])
    return 0


def _run_ranks(evaluator: Any, data: Any, out: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Under torchrun: this rank's shard, a barrier, then rank 0 merges (and returns the results)."""
    from faithclip.evaluation.shards import ProcessGroup

    with ProcessGroup(args.device) as group:
        shard = Shard(group.rank, group.world_size)
        # one progress display (rank 0's), not N interleaved ones
        evaluator.run(data, out, progress=not args.no_progress and group.rank == 0, repair=args.repair, shard=shard)
        group.barrier()
        if group.rank != 0:
            return None
        return evaluator.merge(data, out, progress=False, repair=args.repair)
