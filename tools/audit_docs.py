"""The audit's documented results: regenerate them, or check them against a fresh run.

    python tools/audit_docs.py [docs/audit.md] [shapes|reduced|b32 ...] [--jobs N]   # rewrite the results
    python tools/audit_docs.py --check [docs/audit.md] [--reduced]                   # exit 1 if a figure disagrees
    ... --reference DIR   # the reference folder of the b32 runs (default ../shared/reference)

Every results block (between ``<!-- results:NAME:start -->`` and ``<!-- results:NAME:end -->``) is
made of fenced blocks that start with the command that printed them (``$ faithclip audit ...``): the
generator runs exactly those commands through the CLI's own parser and ``run_audit``, with the CLI's
defaults. ``--check`` reruns the commands found in the file (``--reduced``: only the ``reduced`` block,
the demo's size, a few seconds) and compares every documented number with the fresh output: a figure
printed as ``value [low, high]`` must lie inside the fresh interval; any other number must equal the
fresh one to the printed precision (one unit of the last digit: float32 noise can flip a rounding).

The rules are ``faithclip.docfigures``'s; ``python -m faithclip.cli.docs --check`` checks these blocks with every
other page's documented figures, and regenerates docs/audit.md's sections by running this script. It is a
tool of the repository (it writes docs/audit.md and reads the reference folder beside it), not of the
installed package: run it from the repository root.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from faithclip.cli.audit import run_command
from faithclip.demo import DEMO_AUDIT
from faithclip.docfigures import block_bounds, compare_output
from faithclip.errors import FaithclipError
from faithclip.explanation import write_atomic

logger = logging.getLogger(__name__)

REFERENCE = "../shared/reference"  # the shared reference folder: real model configs and sample images
SEEDS = (0, 1, 2)
MAIN = "faithclip audit --ladder --correctness"
# The demo's audit section runs this reduced size; the fast test checks its block.
REDUCED = DEMO_AUDIT.command()


@dataclass
class Run:
    command: str
    intro: str = ""


def b32(reference: str = REFERENCE) -> str:
    """The ViT-B/32 config (built with random weights) of the b32 runs, in the reference folder."""
    return f"{reference}/openai-clip-vit-base-patch32"


def sections(reference: str = REFERENCE) -> dict[str, list[Run]]:
    """The runs of each results block of docs/audit.md; the b32 runs read ``reference``."""
    voc = f"{reference}/voc2011-samples"
    return {
        # P2's runs (`faithclip audit --ladder`, 3 seeds) are in docs/p2.md; this page keeps the departure.
        "shapes": [Run("faithclip audit" + (f" --seed {seed} --map-images 0" if seed else "")) for seed in SEEDS]
        + [
            Run(
                "faithclip audit --aspect 0.75 --seed 2",
                "Non-square variant: renders cropped to 128x96 (W x H), so the model's centre crop loses the sides "
                "the official input keeps (single-object scene seed 3):",
            )
        ],
        "reduced": [
            Run(
                REDUCED,
                f"The demo's audit section (`faithclip demo`), a REDUCED size: {len(DEMO_AUDIT.methods or ())} "
                f"methods, P2 on {DEMO_AUDIT.p2_scenes} scene pairs x {DEMO_AUDIT.p2_ladders} ladder x "
                f"{DEMO_AUDIT.p2_rungs} rungs (below the smallest design offered a P2 verdict: "
                f"inconclusive by rule), {DEMO_AUDIT.scenes} single-object scenes. The P2 verdicts to "
                "read are in docs/p2.md.",
            )
        ],
        "b32": [
            Run(
                f"faithclip audit --model {b32(reference)} --random-weights --scenes 24 --raw-size 448 --map-images 4 "
                "--deletion-steps 8"
            ),
            Run(
                f"faithclip audit --model {b32(reference)} --random-weights --images {voc}/JPEGImages/*.jpg "
                f"--class-names {voc}/class_names.txt --map-images 3 --deletion-steps 10"
            ),
        ],
    }


SECTIONS = sections()  # with the default reference folder


def _run_on_one_thread(command: str) -> dict:
    torch.set_num_threads(1)
    return run_command(command)


def run_commands(commands: list[str], jobs: int = 1) -> list[dict]:
    """``run_command`` for each command, in ``jobs`` worker processes (one torch thread each); the results
    do not depend on ``jobs`` (each run is deterministic and shares nothing with the others)."""
    if jobs <= 1 or len(commands) <= 1:
        return [run_command(command) for command in commands]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(min(jobs, len(commands)), mp_context=get_context("spawn")) as pool:
        return list(pool.map(_run_on_one_thread, commands))


def render_run(command: str, results: dict) -> str:
    from faithclip.report.audit_report import format_audit

    return f"```\n$ {command}\n{format_audit(results)}\n```\n"


def seeds_table(results: dict[int, dict]) -> str:
    """A Markdown table of the P2 verdicts (primary pair) of the runs for several seeds."""
    seeds = sorted(results)
    methods = results[seeds[0]]["p2"]["methods"]
    header = "| method | " + " | ".join(f"seed {s}: r [95 %], verdict" for s in seeds) + " |"
    lines = [header, "|---" * (len(seeds) + 1) + "|"]
    for method in methods:
        cells = []
        for seed in seeds:
            entry = results[seed]["p2"]["primary"]["methods"][method]
            cells.append(f"{entry['r']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}] {entry['verdict']}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_section(name: str, jobs: int = 1, reference: str = REFERENCE) -> str:
    if name == "b32" and not Path(b32(reference)).is_dir():
        return f"Not run: {reference} is not available.\n"
    if name != "b32":
        from faithclip.models.loading import shipped_models

        if "shapes-clip" not in shipped_models():
            return "Not run: the shipped model `shapes-clip` is not installed.\n"
    parts, by_seed = [], {}
    runs = sections(reference)[name]
    for run, results in zip(runs, run_commands([run.command for run in runs], jobs)):
        if name == "shapes" and "p2" in results:
            by_seed[results["settings"]["seed"]] = results
        parts.append((run.intro + "\n\n" if run.intro else "") + render_run(run.command, results))
    if by_seed:
        parts.insert(0, "P2 verdicts per seed (generated from the runs below):\n\n" + seeds_table(by_seed))
    return "\n".join(parts)


def regenerate(markdown: Path, names: list[str], jobs: int = 1, reference: str = REFERENCE) -> None:
    for name in names:
        block_bounds(markdown.read_text(), name)  # fail before computing
        body = render_section(name, jobs, reference)
        text = markdown.read_text()  # read again: the file may have been edited during the run
        begin, finish = block_bounds(text, name)
        write_atomic(markdown, f"{text[:begin]}\n{body}\n{text[finish:]}".encode())
        logger.info("wrote the %s results into %s", name, markdown)


# ---- the check (the rules are faithclip.docfigures', shared with every page: python -m faithclip.cli.docs) --------
FENCE = re.compile(r"```\n\$ (faithclip audit[^\n]*)\n(.*?)```", re.DOTALL)


def documented_runs(text: str, reduced: bool = False) -> list[tuple[str, str]]:
    """(command, documented output) of every fenced run in the results blocks (or the reduced block only)."""
    names = ["reduced"] if reduced else re.findall(r"<!-- results:(\w+):start -->", text)
    runs = []
    for name in names:
        begin, finish = block_bounds(text, name)
        runs += [(m.group(1), m.group(2)) for m in FENCE.finditer(text[begin:finish])]
    return runs


def check(markdown: Path, reduced: bool = False, run=run_command, reference: str = REFERENCE) -> list[str]:
    """Rerun every documented command and return one line per documented figure a fresh run contradicts."""
    from faithclip.report.audit_report import format_audit

    runs = documented_runs(markdown.read_text(), reduced)
    if not runs:
        raise KeyError(
            f"{markdown} documents no `$ faithclip audit ...` runs{' in its reduced block' if reduced else ''}"
        )
    problems = []
    for command, documented in runs:
        if f"--model {b32(reference)}" in command and not Path(b32(reference)).is_dir():
            logger.warning("skipped (%s is not available): %s", reference, command)
            continue
        fresh = format_audit(run(command))
        problems += [f"{markdown}: `{command}`: {p}" for p in compare_output(documented, fresh)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/audit_docs.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("markdown", nargs="?", default="docs/audit.md")
    parser.add_argument("sections", nargs="*", help=f"sections to regenerate (default: all of {sorted(SECTIONS)})")
    parser.add_argument("--check", action="store_true", help="compare the documented figures with a fresh run")
    parser.add_argument("--reduced", action="store_true", help="with --check: only the reduced (demo-size) block")
    parser.add_argument("--jobs", type=int, default=1, help="regenerate a section's runs in this many processes")
    parser.add_argument(
        "--reference",
        default=REFERENCE,
        metavar="DIR",
        help=f"the reference folder the b32 runs read (openai-clip-vit-base-patch32, voc2011-samples; default {REFERENCE})",
    )
    args = parser.parse_args(argv)
    if args.markdown in SECTIONS:  # `python tools/audit_docs.py shapes`: the default file, that section
        args.sections, args.markdown = [args.markdown, *args.sections], "docs/audit.md"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    markdown = Path(args.markdown)
    if not markdown.is_file():
        print(f"{markdown}: no such file", file=sys.stderr)
        return 2
    unknown = sorted(set(args.sections) - set(SECTIONS))
    usage = None
    if unknown:
        usage = f"unknown sections {unknown}; choose from {sorted(SECTIONS)}"
    elif args.check and args.sections:
        usage = "--check reruns every documented run (or --reduced: the demo-size block); it takes no sections"
    elif args.reduced and not args.check:
        usage = "--reduced only applies to --check"
    if usage:
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    try:
        if not args.check:
            regenerate(markdown, args.sections or list(SECTIONS), max(1, args.jobs), args.reference)
            return 0
        problems = check(markdown, args.reduced, reference=args.reference)
    except KeyError as error:
        print(f"{markdown}: {error.args[0]}", file=sys.stderr)
        return 2
    except FaithclipError as error:
        print(f"{markdown}: a documented command cannot run: {error}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if not problems:
        print(f"{markdown}: every documented figure lies within a fresh run's interval")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
