"""P2 replicated: ``python -m faithclip.audit.p2_replicate [--scene-seeds 2,3,4] [--ladder-seeds 0,3,6] ...``

One P2 run (``faithclip.audit.p2.p2_test``, the audit's design) per pair of a scene seed and a ladder seed,
each with every listed method (Holm within the run, as in the audit), and one table per pair of measures:
per method, r [95 %] and the verdict in every cell, and whether the verdict is the same in all of them. A
verdict that changes with the scenes or the ladders is not a finding about the method; this command is how
docs/p2.md shows which verdicts hold.

``--save DIR`` keeps every run (its per-scene measures included) as ``DIR/scenesS_laddersL.json``; ``--load
DIR`` recomputes the tables from those measures with the current statistics, without the model (a run is a
measurement; the statistics are a function of it). ``--load A,B`` joins the methods of runs kept in several
folders cell by cell (``join_runs``): the runs of one cell must be the same measurement of the model (same
design, model, ladders and alphas, and per-scene model measures equal within ``JOIN_TOLERANCE``), so a grid
measured for some methods can be extended with others and tested with Holm over all of them.

``--pooled`` adds one more table: the whole grid as ONE design (``pooled_statistics``). Each scene seed's
scenes carry the ladders of all its cells (distinct ladder seeds; 3 cells x 2 ladders = 6), the scene sets are
stacked (3 x 128 = 384 scenes), and the same test and verdict rule run on it, Holm over its methods. Every
quantity is two-way centred within its scene set first (each set has its own rungs: its scan finds its own
alphas), so each scene's r_s is the one of its own cells; the bootstrap then draws ladder seeds (a seed is the
same re-initialisation in every set) and scenes of all sets. It is one larger measurement, not a replication:
its verdict's operating characteristics at that size are printed by ``python -m faithclip.audit.p2_simulate
--sizes 6x384 --methods M``.

``--primary effect`` restates (with ``--load``) or measures the primary pair with the former x, the named
object's effect alone, instead of the model's reliance (``faithclip.audit.p2``; docs/p2.md, "Why the primary pair
changed"); a run kept before ``reliance`` existed loads only so, or after ``tools/p2_reliance.py``. ``--reinit
spawned`` draws every ladder's re-initialised copy from a seed spawned from its ladder seed
(``faithclip.audit.ladder.reinit_seed``).

``--components`` adds where the variation between cells comes from: each scene set's r on each single ladder
(``ladder_table``), split by the method of moments into a scene-set, a ladder and a residual component
(``p2stats.variance_components``), and the standard errors of a cell's r and of the pooled r that they
predict, beside the cells' own bootstrap standard errors: whether the intervals carry what moves r between
cells. ``python -m faithclip.audit.p2_simulate --grid 3x3`` turns the components into the rate at which a grid
gives one method the same verdict in every cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from faithclip.audit.ladder import REINITS
from faithclip.audit.p2 import PRIMARY_XS, P2Design, p2_statistics, pairs
from faithclip.audit.p2stats import (
    ASSOCIATIONS,
    association_scale,
    average_scene_correlation,
    two_way_centred,
    variance_components,
)

# grad_eclip is left out: it gives Attention-ECLIP's maps (docs/equivalence.md), so the same r in every cell.
# occlusion, rise and m2ib are left out for time, as in the audit's default (occlusion alone costs about as much
# as the nine others together); tests/unit/test_p2_controls.py runs occlusion as the known-answer control.
DEFAULT_METHODS = (
    "attention_eclip",
    "grad_eclip_official",
    "clip_surgery",
    "game",
    "grad_cam",
    "legrad",
    "maskclip",
    "rollout",
    "self_attention",
)


def default_methods(family: str) -> list[str]:
    """``DEFAULT_METHODS`` that run on ``family`` (clip_surgery: CLIP and BLIP only; grad_eclip_official: not SigLIP)."""
    from faithclip.registry import METHODS

    return [m for m in DEFAULT_METHODS if METHODS.get(m).supports(family)]


def run_name(scene_seed: int, ladder_seed: int) -> str:
    return f"scenes{scene_seed}_ladders{ladder_seed}.json"


def restate(
    run: dict[str, Any], methods: list[str], association: str | None = None, primary: str | None = None
) -> dict[str, Any]:
    """The run's statistics for ``methods`` (Holm over them) recomputed from its stored per-scene measures with
    the current code, on the ``association`` scale and with the ``primary`` pair's x (None: the run's design's;
    a run kept before the option existed reads as the current default). A method the run did not measure is a
    KeyError."""
    design = P2Design(**run["design"])
    if association is not None:
        design = replace(design, association=association)
    if primary is not None:
        design = replace(design, primary=primary)
    run = {**run, "design": asdict(design)}
    model = {k: np.asarray(v, dtype=np.float64) for k, v in run["per_scene"]["model"].items()}
    maps = {m: {k: np.asarray(v, dtype=np.float64) for k, v in run["per_scene"]["maps"][m].items()} for m in methods}
    return {**run, "methods": list(methods), **p2_statistics(model, maps, design)}


def spread_line(runs: dict[tuple[int, int], dict[str, Any]]) -> str:
    """How much the scenes differ (primary pair): the SD of the per-scene r_s and the bootstrap half-width of
    r, median and range over every method of every run -- what ``p2_simulate``'s ``SCENE_SD`` is set to match."""
    from faithclip.audit.p2stats import scene_correlations

    sds, widths = [], []
    for run in runs.values():
        association = P2Design(**run["design"]).association
        x_name, y_name = pairs(P2Design(**run["design"]))["primary"]
        x = association_scale(np.asarray(run["per_scene"]["model"][x_name], dtype=np.float64), association)
        for method in run["methods"]:
            y = np.asarray(run["per_scene"]["maps"][method][y_name], dtype=np.float64)
            r_s = scene_correlations(x, association_scale(y, association))
            sds.append(float(np.nanstd(r_s, ddof=1)))
            entry = run["primary"]["methods"][method]
            widths.append((entry["high"] - entry["low"]) / 2)
    return (
        f"spread (primary, {len(sds)} method-runs): per-scene r SD median {np.median(sds):.2f} "
        f"({min(sds):.2f}-{max(sds):.2f}); bootstrap half-width of r median {np.median(widths):.2f} "
        f"({min(widths):.2f}-{max(widths):.2f})"
    )


def tables(runs: dict[tuple[int, int], dict[str, Any]]) -> str:
    """One markdown table per pair of measures: methods x cells, and whether the verdicts agree."""
    cells = sorted(runs)
    first = next(iter(runs.values()))
    design = P2Design(**first["design"])
    methods = list(first["methods"])
    lines = []
    for pair, (x_name, y_name) in pairs(design).items():
        lines += [
            "",
            f"{pair}: x = {x_name}, y = {y_name}; r [95 %] verdict per (scene seed, ladder seed)",
            "",
            "| method | " + " | ".join(f"{s}, {l}" for s, l in cells) + " | same verdict |",
            "|---|" + "---|" * (len(cells) + 1),
        ]
        for method in methods:
            entries = [runs[cell][pair]["methods"][method] for cell in cells]
            verdicts = {e["verdict"] for e in entries}
            lines.append(
                f"| {method} | "
                + " | ".join(f"{e['r']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}] {e['verdict']}" for e in entries)
                + f" | {'yes: ' + verdicts.pop() if len(verdicts) == 1 else 'no'} |"
            )
    spread = spread_line(runs)
    lines += ["", spread]
    head = (
        f"P2 on {first['model']}: {len(cells)} runs of {design.scenes} scenes x {design.ladders} ladders x "
        f"{design.rungs} rungs, {len(methods)} methods (Holm within each run; association {design.association})"
    )
    if design.reinit != P2Design().reinit:
        head += f"; ladders re-initialised {design.reinit}"
    return head + "\n" + "\n".join(lines)


def pooled_statistics(runs: dict[tuple[int, int], dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """The grid as one design (module docstring): per scene seed, its cells' ladders stacked in ladder-seed
    order and two-way centred; the scene sets then stacked along the scenes. Raises ValueError when the cells
    cannot form one design: a scene seed lacking a ladder seed another has, ladder seeds that overlap between
    cells of one scene seed, or designs that differ in anything but their seeds."""
    scene_seeds = sorted({s for s, _ in runs})
    ladder_seeds = sorted({l for _, l in runs})
    if any((s, l) not in runs for s in scene_seeds for l in ladder_seeds):
        raise ValueError("--pooled needs every (scene seed, ladder seed) cell of the grid")
    first = runs[(scene_seeds[0], ladder_seeds[0])]

    def unseeded(design: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in design.items() if k not in ("scene_seed", "ladder_seed")}

    if any(unseeded(run["design"]) != unseeded(first["design"]) for run in runs.values()):
        raise ValueError("--pooled needs runs of one design (they differ in more than their seeds)")
    per_cell = first["design"]["ladders"]
    drawn = [l + k for l in ladder_seeds for k in range(per_cell)]
    if len(set(drawn)) != len(drawn):
        raise ValueError(overlap_message(drawn, per_cell))

    association = P2Design(**first["design"]).association

    def stacked(read) -> np.ndarray:  # (all ladders, all scenes, rungs), scaled and centred within each scene set
        sets = []
        for s in scene_seeds:
            ladders = [np.asarray(read(runs[(s, l)]), dtype=np.float64) for l in ladder_seeds]
            sets.append(two_way_centred(association_scale(np.concatenate(ladders, axis=0), association)))
        return np.concatenate(sets, axis=1)

    measures = pairs(P2Design(**first["design"])).values()
    model = {x: stacked(lambda run, x=x: run["per_scene"]["model"][x]) for x, _ in measures}
    maps = {m: {y: stacked(lambda run, m=m, y=y: run["per_scene"]["maps"][m][y]) for _, y in measures} for m in methods}
    scenes = first["design"]["scenes"] * len(scene_seeds)
    design = P2Design(**{**first["design"], "scenes": scenes, "ladders": len(drawn)})
    statistics = p2_statistics(model, maps, design, scaled=True)
    return {"design": design, "scene_seeds": scene_seeds, "ladder_seeds": drawn, **statistics}


def overlap_message(drawn: list[int], per_cell: int) -> str:
    return (
        f"--pooled: the cells' ladders overlap (ladder seeds {drawn}); space the first ladder seeds by at least "
        f"{per_cell}"
    )


def pooled_table(runs: dict[tuple[int, int], dict[str, Any]], methods: list[str]) -> str:
    """``pooled_statistics`` as a markdown table: per method, each pair's r [95 %], verdict and scenes used."""
    result = pooled_statistics(runs, methods)
    design = result["design"]
    lines = [
        "",
        f"pooled: the grid as one design, {design.scenes} scenes (scene seeds "
        f"{', '.join(map(str, result['scene_seeds']))}) x {design.ladders} ladders (seeds "
        f"{', '.join(map(str, result['ladder_seeds']))}) x {design.rungs} rungs, {len(methods)} methods (Holm over "
        f"its {2 * len(methods)} p-values)",
        "",
        "| method | " + " | ".join(f"{pair}: r [95 %] | verdict | scenes (undefined)" for pair in pairs(design)) + " |",
        "|---|" + "---|---|---|" * len(pairs(design)),
    ]
    for method in methods:
        cells = []
        for pair in pairs(design):
            e = result[pair]["methods"][method]
            cells.append(
                f"{e['r']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}] | {e['verdict']} | {e['scenes']} ({e['undefined']})"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ladder_table(runs: dict[tuple[int, int], dict[str, Any]], method: str, pair: str = "primary") -> np.ndarray:
    """``(scene seeds, ladders)``: the r of each scene set on each single ladder (the estimand on that ladder's
    rungs alone), ladders in ladder-seed order; the grid must be crossed (every scene seed with every ladder
    seed)."""
    scene_seeds = sorted({s for s, _ in runs})
    ladder_seeds = sorted({l for _, l in runs})
    if any((s, l) not in runs for s in scene_seeds for l in ladder_seeds):
        raise ValueError("--components needs every (scene seed, ladder seed) cell of the grid")
    x_name, y_name = pairs(P2Design(**next(iter(runs.values()))["design"]))[pair]
    table = []
    for s in scene_seeds:
        row = []
        for l in ladder_seeds:
            run = runs[(s, l)]
            association = P2Design(**run["design"]).association
            x = association_scale(np.asarray(run["per_scene"]["model"][x_name], dtype=np.float64), association)
            y = association_scale(np.asarray(run["per_scene"]["maps"][method][y_name], dtype=np.float64), association)
            for k in range(x.shape[0]):
                row.append(average_scene_correlation(two_way_centred(x[k : k + 1]), two_way_centred(y[k : k + 1]))[0])
        table.append(row)
    return np.asarray(table)


def signed_sd(variance: float) -> str:
    """A variance component as an SD, its sign kept (a sample estimate can be negative)."""
    return f"{np.sign(variance) * np.sqrt(abs(variance)):+.3f}"


def predicted_ses(components, per_cell: int, shape: tuple[int, int]) -> tuple[float, float]:
    """The SEs that ``(set, ladder, residual)`` variances predict for a cell's r (its ``per_cell`` ladders) and
    for the r of the whole ``(K, J)`` grid: ``sqrt(set + (ladder + residual) / L)`` and ``sqrt(set / K +
    ladder / J + residual / (K J))`` (a negative sum reads as 0)."""
    v_set, v_ladder, v_residual = components
    sets, ladders = shape
    cell = v_set + (v_ladder + v_residual) / per_cell
    grid = v_set / sets + v_ladder / ladders + v_residual / (sets * ladders)
    return float(np.sqrt(max(cell, 0.0))), float(np.sqrt(max(grid, 0.0)))


def components_table(runs: dict[tuple[int, int], dict[str, Any]], pair: str = "primary") -> str:
    """Per method, the variance components of the per-ladder r (``ladder_table``, ``variance_components``):
    scene set, ladder and residual (their interaction and the rest), as SDs; the SEs they predict for a cell
    and for the grid as one design (``predicted_ses``), beside the cells' own bootstrap SE (median of
    half-width / 1.96); and the same from the mean of the methods' variances."""
    methods = list(next(iter(runs.values()))["methods"])
    per_cell = next(iter(runs.values()))["design"]["ladders"]
    lines = [
        "",
        f"variance components of the per-ladder r ({pair}; method of moments, crossed scene sets x ladders), as SDs",
        "",
        "| method | scene set | ladder | residual | cell SE: predicted | cell SE: bootstrap | grid SE: predicted |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, components, bootstrap: float, shape: tuple[int, int]) -> str:
        cell, grid = predicted_ses(components, per_cell, shape)
        sds = " | ".join(signed_sd(v) for v in components)
        return f"| {name} | {sds} | {cell:.3f} | {bootstrap:.3f} | {grid:.3f} |"

    totals, boots = [], []
    for method in methods:
        table = ladder_table(runs, method, pair)
        components = variance_components(table)
        cells = [(r[pair]["methods"][method]["high"] - r[pair]["methods"][method]["low"]) / 3.92 for r in runs.values()]
        totals.append(components)
        boots += cells
        lines.append(row(method, components, float(np.median(cells)), table.shape))
    lines.append(row("mean of the variances", tuple(np.mean(totals, axis=0)), float(np.median(boots)), table.shape))
    return "\n".join(lines)


class Refused(Exception):
    """A user error: one line on stderr, exit 2."""


# Two runs of one cell measured on different machines (or thread counts) differ in the float32 rounding of the
# model's scores: per-scene model measures (score differences of order 1) must agree to this absolute bound.
JOIN_TOLERANCE = 1e-4


def measured(design: dict[str, Any]) -> dict[str, Any]:
    """What a run's design says about its measurement: every field but the statistics' choices (``association``
    and ``primary``, which ``--load`` may restate), a run kept before a field existed read with its default."""
    return {k: v for k, v in asdict(P2Design(**design)).items() if k not in ("association", "primary")}


def join_runs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run holding every method of ``parts``, runs of the same cell (the same measurement of the model).
    Raises ValueError, naming what differs, when they are not; a method in two parts must agree too."""
    first = parts[0]
    if len(parts) == 1:
        return first
    joined = {**first, "methods": list(first["methods"]), "contrast": dict(first["contrast"])}
    joined["per_scene"] = {"model": first["per_scene"]["model"], "maps": dict(first["per_scene"]["maps"])}
    for part in parts[1:]:
        if measured(part["design"]) != measured(first["design"]):
            raise ValueError(f"their design differs: {part['design']} against {first['design']}")
        if part["model"] != first["model"]:
            raise ValueError(f"their model differs: {part['model']} against {first['model']}")
        if [ladder["alphas"] for ladder in part["ladders"]] != [ladder["alphas"] for ladder in first["ladders"]]:
            raise ValueError("their ladders' alphas differ")
        for name, values in part["per_scene"]["model"].items():
            if not np.allclose(values, first["per_scene"]["model"][name], rtol=0, atol=JOIN_TOLERANCE):
                raise ValueError(f"their per-scene model measure {name!r} differs by more than {JOIN_TOLERANCE}")
        new = False
        for method, measures in part["per_scene"]["maps"].items():
            known = joined["per_scene"]["maps"].get(method)
            if known is not None and any(not np.allclose(measures[k], known[k], atol=JOIN_TOLERANCE) for k in known):
                raise ValueError(f"both measured {method} and their maps' measures differ")
            if known is None:
                joined["per_scene"]["maps"][method] = measures
                joined["contrast"][method] = part["contrast"][method]
                joined["methods"].append(method)
                if method in part.get("options", {}):  # the method options it was measured with
                    joined["options"] = {**joined.get("options", {}), method: part["options"][method]}
                new = True
        if new:  # the time of a run that only measured again what another part holds is not this grid's
            joined["seconds"] = joined["seconds"] + part["seconds"]
    return joined


def load_runs(
    folders: list[Path],
    cells: list[tuple[int, int]],
    methods: list[str] | None,
    association: str | None = None,
    primary: str | None = None,
) -> dict[tuple[int, int], dict[str, Any]]:
    """The runs kept by ``--save`` in ``folders`` (each cell's runs joined, ``join_runs``), restated for
    ``methods`` with the current statistics (on ``association``, with ``primary``: ``restate``)."""
    runs = {}
    for s, l in cells:
        paths = [folder / run_name(s, l) for folder in folders]
        try:
            parts = [json.loads(path.read_text()) for path in paths]
        except (OSError, ValueError) as error:
            raise Refused(f"cannot read a run from {error.filename or paths}: {error!r}") from error
        for path, part in zip(paths, parts):
            design = P2Design(**part["design"])
            design = replace(design, primary=primary) if primary is not None else design
            if any(x not in part["per_scene"]["model"] for x, _ in pairs(design).values()):
                raise Refused(
                    f"{path} was measured before P2's primary pair became (reliance, share) on 2026-12-03; add the "
                    f"model's reliance to it with python tools/p2_reliance.py {path.parent}, or restate it with the "
                    "former pair, --primary effect"
                )
        try:
            run = join_runs(parts)
        except (ValueError, KeyError) as error:
            raise Refused(f"cannot join the runs {', '.join(map(str, paths))}: {error}") from error
        methods = methods or run["methods"]  # none named: every method of the first cell's runs
        missing = [m for m in methods if m not in run["methods"]]
        if missing:
            raise Refused(f"no run of cell ({s}, {l}) in {', '.join(map(str, folders))} measured {', '.join(missing)}")
        runs[(s, l)] = restate(run, methods, association, primary)
    return runs


def measure_runs(
    args: argparse.Namespace, cells: list[tuple[int, int]], methods: list[str] | None
) -> dict[tuple[int, int], dict[str, Any]]:
    """One ``p2_test`` per cell on one thread, each kept in ``args.save`` (when given) as soon as it is done."""
    if args.save is not None:
        try:
            args.save.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise Refused(f"cannot write to {args.save}: {error}") from error
    import torch

    from faithclip.api import tower_layers
    from faithclip.audit.p2 import p2_test
    from faithclip.errors import FaithclipError, MethodError
    from faithclip.models.loading import load
    from faithclip.registry import METHODS, check_method_options, parse_dotted

    torch.set_num_threads(1)
    try:
        handle = load(args.model)
        for m in methods or ():
            METHODS.get(m)
        methods = methods or default_methods(handle.family.name)
        options = parse_dotted(args.method_option, "--method-option", MethodError)
        check_method_options(options, methods, "image", tower_layers(handle, "image"))
    except (FaithclipError, KeyError, ValueError) as error:
        raise Refused(str(error)) from error
    design = replace(
        P2Design(),
        scenes=args.scenes,
        ladders=args.ladders,
        rungs=args.rungs,
        association=args.association or P2Design().association,
        reinit=args.reinit or P2Design().reinit,
        primary=args.primary or P2Design().primary,
    )
    runs = {}
    for s, l in cells:
        run = {**p2_test(handle, methods, replace(design, scene_seed=s, ladder_seed=l), options), "options": options}
        runs[(s, l)] = run
        print(f"run scenes {s}, ladders {l}: {run['seconds']} s", file=sys.stderr, flush=True)
        if args.save is not None:
            (args.save / run_name(s, l)).write_text(json.dumps(run))
    return runs


def parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="python -m faithclip.audit.p2_replicate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="shapes-clip")
    parser.add_argument("--scene-seeds", default="2,3,4", help="comma-separated scene seeds")
    parser.add_argument(
        "--ladder-seeds", default="0,3,6", help="comma-separated first ladder seeds (a run's ladders are L, L + 1, ...)"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods (default: those of {', '.join(DEFAULT_METHODS)} that run on the model's "
        "family; with --load, every method of the runs)",
    )
    parser.add_argument("--scenes", type=int, default=P2Design().scenes)
    parser.add_argument("--ladders", type=int, default=P2Design().ladders)
    parser.add_argument("--rungs", type=int, default=P2Design().rungs)
    parser.add_argument("--save", type=Path, default=None, help="folder to keep every run in")
    parser.add_argument(
        "--load",
        default=None,
        help="recompute from runs kept by --save (comma-separated folders: their methods joined)",
    )
    parser.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method option, e.g. occlusion.window=16 (repeatable; values read as JSON when they parse; kept with "
        "each run)",
    )
    parser.add_argument(
        "--association",
        choices=ASSOCIATIONS,
        default=None,
        help="the scale of the association (faithclip.audit.p2stats): within-rung ranks (the default) or the raw "
        "values; with --load, restates the kept runs on it",
    )
    parser.add_argument(
        "--primary",
        choices=PRIMARY_XS,
        default=None,
        help="the primary pair's x: the model's reliance on the named object among the scene's objects (the "
        "default) or the named object's erase effect alone (the primary pair until 2026-12-03, docs/p2.md); with "
        "--load, restates the kept runs with it",
    )
    parser.add_argument(
        "--reinit",
        choices=REINITS,
        default=None,
        help="how a ladder seed seeds its re-initialised copy (faithclip.audit.ladder.reinit_seed): the seed itself "
        "(the default, every grid of docs/p2.md) or a seed spawned from it, which no training seed meets; with "
        "--load, the runs' own, checked",
    )
    parser.add_argument("--pooled", action="store_true", help="add the table of the whole grid as one design")
    parser.add_argument(
        "--components",
        action="store_true",
        help="add the variance components of the per-ladder r (scene sets, ladders, residual) and the SEs they predict",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()
    try:
        try:
            scene_seeds = [int(v) for v in args.scene_seeds.split(",")]
            ladder_seeds = [int(v) for v in args.ladder_seeds.split(",")]
        except ValueError:
            raise Refused("--scene-seeds and --ladder-seeds are comma-separated integers.") from None
        drawn = [l + k for l in ladder_seeds for k in range(args.ladders)]
        if args.pooled and args.load is None and len(set(drawn)) != len(drawn):
            raise Refused(overlap_message(drawn, args.ladders))
        if args.components and (len(scene_seeds) < 2 or len(drawn) < 2):
            raise Refused("--components needs at least 2 scene seeds and 2 ladders in all (a crossed grid).")
        cells = [(s, l) for s in scene_seeds for l in ladder_seeds]
        methods = [m for m in (args.methods or "").split(",") if m] or None
        if args.load is not None:
            folders = [Path(folder) for folder in args.load.split(",") if folder]
            runs = load_runs(folders, cells, methods, args.association, args.primary)
            kept = {P2Design(**run["design"]).reinit for run in runs.values()}
            if args.reinit is not None and kept != {args.reinit}:
                raise Refused(f"--reinit {args.reinit}: the kept runs were measured with --reinit {', '.join(kept)}.")
        else:
            runs = measure_runs(args, cells, methods)
        sections = [tables(runs)]  # every table is made before any is printed: a refusal prints nothing else
        try:
            if args.pooled:
                sections.append(pooled_table(runs, list(next(iter(runs.values()))["methods"])))
            if args.components:
                sections.append(components_table(runs))
        except ValueError as error:
            raise Refused(str(error)) from error
        print("\n".join(sections))
    except Refused as error:
        print(f"p2_replicate: {error}", file=sys.stderr)
        return 2
    seconds = [run["seconds"] for run in runs.values()]
    print(
        f"\n(runs took {min(seconds):.0f}-{max(seconds):.0f} s each when measured; this command "
        f"{time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
