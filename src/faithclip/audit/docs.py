"""Regenerate the results of docs/audit.md: ``python -m faithclip.audit.docs [docs/audit.md] [shapes|b32 ...]``.

Runs the audit on (1) the shipped shapes model (departure, ladder, correctness split), when it is
installed, and (2) the real ViT-B/32 architecture with random weights (drift only: shapes scenes
rendered at 448 px and the three VOC photographs of ../shared/reference), and replaces the text
between ``<!-- results:NAME:start -->`` and ``<!-- results:NAME:end -->`` for each section NAME run
(default: both).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from faithclip.audit.data import folder_data, shapes_data
from faithclip.audit.departure import audit_departure
from faithclip.audit.ladder import LadderConfig, correctness_split, degrade, performance_ladder
from faithclip.audit.report import format_audit, format_correctness
from faithclip.explanation import write_atomic

logger = logging.getLogger(__name__)

REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference"


def shapes_section() -> str:
    from faithclip.models.loading import load, shipped_models

    if "shapes-clip" not in shipped_models():
        return "### Shapes model\n\nNot run: the shipped model `shapes-clip` is not installed yet.\n"
    handle = load("shapes-clip")
    raw = 2 * handle.image_size
    data = shapes_data(200, raw_size=raw, seed=1)
    results = audit_departure(handle, data, map_images=16)
    pointing = shapes_data(24, raw_size=raw, seed=2, kind="multi")
    results["ladder"] = performance_ladder(handle, data, pointing, config=LadderConfig())
    results["correctness"] = correctness_split(handle, data)
    square = format_audit(results)
    half = correctness_split(degrade(handle, 0.5), data)
    wide = audit_departure(handle, shapes_data(200, raw_size=raw, seed=3, aspect=0.75), map_images=16)
    return ("### Shapes model (`shapes-clip`), scenes rendered at "
            f"{raw} px (model input {handle.image_size} px)\n\n```\n{square}\n```\n\n"
            "The trained model is almost always right, so P2 (b) is repeated on the ladder's alpha = 0.5 rung, "
            f"which errs often:\n\n```\n{format_correctness(half)}\n```\n\n"
            f"Non-square variant: renders cropped to {raw}x{int(round(raw * 0.75))} (W x H), so the model's "
            f"centre crop loses the sides the official input keeps:\n\n```\n{format_audit(wide)}\n```\n")


def b32_section() -> str:
    from faithclip.cli.audit import random_init_handle

    directory = REFERENCE / "openai-clip-vit-base-patch32"
    if not directory.is_dir():
        return "### ViT-B/32 architecture\n\nNot run: ../shared/reference is not available.\n"
    handle = random_init_handle(str(directory), seed=0)
    scenes = audit_departure(handle, shapes_data(24, raw_size=448, seed=1), map_images=4, deletion_steps=8)
    voc_dir = REFERENCE / "voc2011-samples"
    names = [n.strip() for n in (voc_dir / "class_names.txt").read_text().splitlines() if n.strip() and not n.startswith("_")]
    voc = folder_data(sorted((voc_dir / "JPEGImages").glob("*.jpg")), [f"a photo of a {n}." for n in names],
                      name="VOC 2011 samples (500x338, 500x375)")
    photos = audit_departure(handle, voc, map_images=3, deletion_steps=10)
    return ("### ViT-B/32 architecture, random weights (drift only; accuracy is meaningless)\n\n"
            f"```\n{format_audit(scenes)}\n```\n\n```\n{format_audit(photos)}\n```\n")


SECTIONS = {"shapes": shapes_section, "b32": b32_section}


def regenerate(markdown: Path, sections: list[str]) -> None:
    for name in sections:
        start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
        if start not in markdown.read_text() or end not in markdown.read_text():
            raise SystemExit(f"{markdown} has no {start} ... {end} block to fill")
        body = SECTIONS[name]()
        text = markdown.read_text()  # read again: the file may have been edited during the run
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        write_atomic(markdown, f"{head}{start}\n{body}\n{end}{tail}".encode())
        logger.info("wrote the %s results into %s", name, markdown)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    arguments = sys.argv[1:]
    target = Path(arguments.pop(0)) if arguments and arguments[0].endswith(".md") else Path("docs/audit.md")
    unknown = sorted(set(arguments) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {sorted(SECTIONS)}")
    regenerate(target, arguments or list(SECTIONS))
