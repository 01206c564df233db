"""Operating characteristics of P2's verdict: ``python -m faithclip.audit.p2_simulate [--replicates N] ...``

Synthetic per-scene data ``(L, S, V)`` go through the SAME ``within_test`` and ``p2_verdicts`` (Holm over the
run's methods included) that ``faithclip audit --ladder`` and ``faithclip check`` use; the rate of each verdict
is counted per scenario and size. Per ladder l, scene s, rung v (z's independent standard normals):

    x = scene_s + trend_v + z_x                             trend_v falls linearly by 3 (within SD 1)
    y = scene'_s + trend'_v + r z_x + sqrt(1 - r^2) z_y     continuous map quality, true within r = r
    y = 1[scene'_s + r z_x + sqrt(1 - r^2) z_y > 0]         binary pointing (scenarios marked "0/1")

    y = scene'_s + trend'_v + r_s z_x + sqrt(1 - r_s^2) z_y  r_s = clip(r + 0.6 N(0, 1), -0.95, 0.95): "scenes differ"

Scenarios: ``maps ignore the model`` (y constant across rungs within a scene: the trained model's map reused),
``null r = 0`` (y moves with the rungs but not with the model within scenes), ``flat pointing 0/1`` (y 0/1
with a fixed hit rate while x falls), ``tracks r = 0.1 / 0.2 / 0.3``, and ``tracks 0/1 r = 0.3``; the
``heavy`` scenarios draw z_x from Student's t with 3 degrees of freedom times a per-scene scale (lognormal,
sigma 1), standardised, as real erase effects are: a few scenes at a few rungs carry most of the variation.
The ``scenes differ`` scenarios give every scene its own association around the mean r, with SD ``SCENE_SD`` =
0.6: with it the simulated spread matches shapes-clip's measured one (3 ladders x 32 scenes, 10 methods, 7 runs:
per-scene r SD 0.54 median, bootstrap half-width 0.20 median; simulated 0.54 and 0.20, and the half-width
equals 1.96 SD of r over simulated runs, 0.21). Without it the simulated data are three times cleaner than the
real ones (half-width 0.07).
``--grid 3x3`` asks what ``p2_replicate`` asks of real runs: how often a grid of runs (3 scene sets x 3
ladder seeds) gives one method the same verdict in every cell (``grid_agreement``). Its cells share what real
cells share: the scenes of their scene set (levels and associations, ``scenes differ``) and the ladders of
their ladder seed, each ladder shifting every scene's association by ``LADDER_SD`` N(0, 1), the ladder
component measured on the kept grids.
A false flag is ``tracks`` when r <= 0 or ``does not track`` when r >= the minimum effect (0.1); power is
``does not track`` at r = 0 and ``tracks`` at r = 0.2 and 0.3. The last column is descriptive: how often the
scene-permutation test of the sharp null (``p_sharp``, unadjusted) rejects at alpha -- it decides nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from faithclip.audit.p2 import VERDICTS, P2Design, p2_verdicts
from faithclip.audit.p2stats import ASSOCIATIONS, association_scale, within_test


@dataclass(frozen=True)
class Scenario:
    name: str
    r: float
    kind: str  # "reuse", "continuous", "binary"


SCENE_SD = 0.6  # each scene its own association: SD of the scenes' r around the mean (docstring)
SCENARIOS = (
    Scenario("maps ignore the model", 0.0, "reuse"),
    Scenario("null r = 0", 0.0, "continuous"),
    Scenario("flat pointing 0/1", 0.0, "binary"),
    Scenario("tracks r = 0.1", 0.1, "continuous"),
    Scenario("tracks r = 0.2", 0.2, "continuous"),
    Scenario("tracks 0/1 r = 0.3", 0.3, "binary"),
    Scenario("heavy null r = 0", 0.0, "heavy"),
    Scenario("heavy tracks r = 0.3", 0.3, "heavy"),
    Scenario("scenes differ r = 0", 0.0, "scenes differ"),
    Scenario("scenes differ r = 0.1", 0.1, "scenes differ"),
    Scenario("scenes differ r = 0.2", 0.2, "scenes differ"),
    Scenario("scenes differ r = 0.3", 0.3, "scenes differ"),
)


def population(scenario: Scenario, scenes: int, generator: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A scene set's fixed parts, each ``(1, S, 1)``: the scenes' levels of x and y and their associations
    (``scenario.r`` for all, or drawn around it with SD ``SCENE_SD`` in the ``scenes differ`` scenarios)."""
    x_level = generator.standard_normal((1, scenes, 1))
    y_level = generator.standard_normal((1, scenes, 1))
    if scenario.kind != "scenes differ":
        return x_level, y_level, np.full((1, scenes, 1), scenario.r)
    return x_level, y_level, np.clip(scenario.r + SCENE_SD * generator.standard_normal((1, scenes, 1)), -0.95, 0.95)


def synthetic(
    scenario: Scenario,
    ladders: int,
    scenes: int,
    rungs: int,
    generator: np.random.Generator,
    scene_set: tuple[np.ndarray, ...] | None = None,
    ladder_shift: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One method's ``(x, y)``, each ``(L, S, V)``, drawn from ``scenario`` (module docstring). ``scene_set``:
    the scenes' fixed parts (``population``; drawn here when None); ``ladder_shift`` ``(L,)``: each ladder's
    shift of every scene's association (``grid_agreement``; none when None)."""
    shape = (ladders, scenes, rungs)
    trend = np.linspace(0, -3, rungs)[None, None, :]
    z_x = generator.standard_normal(shape)
    if scenario.kind == "heavy":
        z_x = generator.standard_t(3, shape) * np.exp(generator.standard_normal((1, scenes, 1)))
        z_x = (z_x - z_x.mean()) / z_x.std()
    x_level, scene_y, r = scene_set if scene_set is not None else population(scenario, scenes, generator)
    x = x_level + trend + z_x
    if scenario.kind == "reuse":
        return x, np.broadcast_to(scene_y, shape).copy()
    if ladder_shift is not None:
        r = np.clip(r + np.asarray(ladder_shift, dtype=np.float64)[:, None, None], -0.95, 0.95)
    noise = r * z_x + np.sqrt(1 - r**2) * generator.standard_normal(shape)
    if scenario.kind == "binary":
        return x, (0.3 * scene_y + noise > 0).astype(np.float64)
    return x, scene_y + 0.5 * trend + noise


def run_verdicts(panels: list[tuple[np.ndarray, np.ndarray]], design: P2Design, seeds: list[int]) -> list[dict]:
    """One simulated run: each method's ``(x, y)`` through ``within_test`` (bootstrap seed from ``seeds``),
    then ``p2_verdicts`` with Holm over the run (the size gate lifted: the rule is what is measured)."""
    tests = {
        f"m{m}": within_test(
            x, y, design.min_effect, design.resamples, design.permutations, 0.95, seed, design.association
        )
        for m, ((x, y), seed) in enumerate(zip(panels, seeds))
    }
    return list(p2_verdicts(tests, design.min_effect, design.alpha, min_scenes=0, min_ladders=0).values())


def simulate(
    scenario: Scenario,
    ladders: int,
    scenes: int,
    rungs: int,
    replicates: int,
    methods: int,
    design: P2Design,
    seed: int = 0,
) -> dict[str, float]:
    """Verdict rates of ``replicates`` runs of ``methods`` methods each (all drawn from ``scenario``)."""
    generator = np.random.default_rng([seed, ladders, scenes, rungs, zlib.crc32(scenario.name.encode())])
    counts = {"tracks": 0, "does not track": 0, "inconclusive": 0, "sharp": 0}
    for replicate in range(replicates):
        panels = [synthetic(scenario, ladders, scenes, rungs, generator) for _ in range(methods)]
        for entry in run_verdicts(panels, design, [replicate * methods + m for m in range(methods)]):
            counts[entry["verdict"]] += 1
            counts["sharp"] += entry["p_sharp"] < design.alpha  # descriptive: the permutation test, unadjusted
    total = replicates * methods
    return {k: v / total for k, v in counts.items()}


# The ladders' share of the variation, for grid_agreement: the SD of a ladder's shift of the association, the
# ladder component of the per-ladder r measured on the six kept grids (three families x two grids of 3 scene
# sets x 6 ladders at 128 scenes, the second grids of shapes-vit and shapes-siglip with their four common
# methods; `p2_replicate --load ... --components`, the root mean square of the grids' ladder SDs; docs/p2.md).
LADDER_SD = 0.026
GRID_RS = (-0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3)  # the mean associations grid_agreement is run at


def grid_agreement(
    r: float, size: tuple[int, int, int], replicates: int, methods: int, design: P2Design, grid=(3, 3), seed=0
) -> dict[str, float]:
    """How often the verdicts of a replication grid agree: ``grid[0]`` scene sets x ``grid[1]`` ladder seeds,
    one run of ``methods`` methods per cell (Holm within it), as ``p2_replicate`` runs them. The cells of one
    scene set share its scenes (``population``: their levels and associations, ``scenes differ``), the cells
    of one ladder seed share its ladders' shifts of the association (SD ``LADDER_SD``); all else is drawn per
    cell. Returns, per method's row of cells, the rate of the same verdict in every cell (and which), and the
    per-cell verdict rates. ``size``: ladders per run, scenes, rungs."""
    ladders, scenes, rungs = size
    scenario = Scenario(f"grid r = {r:g}", r, "scenes differ")
    generator = np.random.default_rng([seed, ladders, scenes, rungs, *grid, zlib.crc32(scenario.name.encode())])
    counts = dict.fromkeys(("same", *(f"all {v}" for v in VERDICTS), *VERDICTS), 0)
    for _ in range(replicates):
        sets = [[population(scenario, scenes, generator) for _ in range(methods)] for _ in range(grid[0])]
        shifts = [[LADDER_SD * generator.standard_normal(ladders) for _ in range(methods)] for _ in range(grid[1])]
        verdicts: list[list[str]] = [[] for _ in range(methods)]
        for scene_set in sets:
            for shift in shifts:
                panels = [
                    synthetic(scenario, ladders, scenes, rungs, generator, scene_set[m], shift[m])
                    for m in range(methods)
                ]
                for m, entry in enumerate(run_verdicts(panels, design, [design.bootstrap_seed] * methods)):
                    verdicts[m].append(entry["verdict"])
        for row in verdicts:
            for verdict in row:
                counts[verdict] += 1
            if len(set(row)) == 1:
                counts["same"] += 1
                counts[f"all {row[0]}"] += 1
    rows = replicates * methods
    return {k: v / (rows * grid[0] * grid[1] if k in VERDICTS else rows) for k, v in counts.items()}


def format_grid(results: list[dict], replicates: int, methods: int, grid: tuple[int, int], design: P2Design) -> str:
    lines = [
        f"Agreement of P2's verdicts over a {grid[0]} x {grid[1]} grid of runs (scene sets x ladder seeds), "
        f"{replicates} simulated grids of {methods} method(s) (Holm over each run's {2 * methods} p-values, alpha "
        f"{design.alpha:g}, minimum effect {design.min_effect:g}, association {design.association}; scenes differ "
        f"with SD {SCENE_SD}, ladders with SD {LADDER_SD})",
        "| ladders | scenes | r | same verdict in every cell | all tracks | all does not track | all inconclusive "
        "| per cell: tracks | does not track | inconclusive |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(lines + [format_grid_row(e) for e in results])


def format_grid_row(e: dict) -> str:
    return (
        f"| {e['ladders']} | {e['scenes']} | {e['r']:+.2f} | {e['same']:.2f} | {e['all tracks']:.2f} | "
        f"{e['all does not track']:.2f} | {e['all inconclusive']:.2f} | {e['tracks']:.2f} | "
        f"{e['does not track']:.2f} | {e['inconclusive']:.2f} |"
    )


def operating_characteristics(
    sizes: list[tuple[int, int]],
    rungs: int,
    replicates: int,
    methods: int,
    design: P2Design = P2Design(),
    seed: int = 0,
    report: Any = None,
) -> list[dict]:
    rows = []
    for ladders, scenes in sizes:
        for scenario in SCENARIOS:
            rates = simulate(scenario, ladders, scenes, rungs, replicates, methods, design, seed)
            rows.append({"ladders": ladders, "scenes": scenes, "scenario": scenario.name, "r": scenario.r, **rates})
            if report:
                report(format_row(rows[-1]))
    return rows


def spread(ladders: int, scenes: int, rungs: int, replicates: int, design: P2Design, seed: int = 0) -> list[str]:
    """Per scenario kind at mean r = 0.1: the median SD of the per-scene r_s, the median bootstrap half-width
    of r and 1.96 SD of r over the replicates -- the figures ``SCENE_SD`` is calibrated on (module docstring)."""
    from faithclip.audit.p2stats import scene_correlations

    lines = [
        f"spread at {ladders} x {scenes}, mean r = 0.1, {replicates} runs:",
        "| scenario | per-scene r SD (median) | half-width of r (median) | 1.96 SD of r over runs |",
        "|---|---|---|---|",
    ]
    for kind in ("continuous", "heavy", "scenes differ"):
        generator = np.random.default_rng([seed, ladders, scenes, zlib.crc32(kind.encode())])
        sds, widths, values = [], [], []
        for replicate in range(replicates):
            x, y = synthetic(Scenario(kind, 0.1, kind), ladders, scenes, rungs, generator)
            test = within_test(
                x, y, design.min_effect, design.resamples, design.permutations, 0.95, replicate, design.association
            )
            scaled = association_scale(x, design.association), association_scale(y, design.association)
            sds.append(np.nanstd(scene_correlations(*scaled), ddof=1))
            widths.append((test.high - test.low) / 2)
            values.append(test.r)
        lines.append(f"| {kind} | {np.median(sds):.2f} | {np.median(widths):.3f} | {1.96 * np.std(values):.3f} |")
    return lines


def format_row(row: dict) -> str:
    return (
        f"| {row['ladders']} | {row['scenes']} | {row['scenario']} | {row['tracks']:.3f} | "
        f"{row['does not track']:.3f} | {row['inconclusive']:.3f} | {row['sharp']:.3f} |"
    )


def format_table(rows: list[dict], replicates: int, methods: int, design: P2Design) -> str:
    lines = [
        f"P2 verdict rates over {replicates} simulated runs of {methods} method(s) each (Holm over the run's "
        f"{2 * methods} p-values, alpha {design.alpha:g}, minimum effect {design.min_effect:g}, "
        f"{design.resamples} resamples, {design.permutations} permutations, association {design.association})",
        "| ladders | scenes | scenario | tracks | does not track | inconclusive | sharp null rejected |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [format_row(row) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m faithclip.audit.p2_simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--replicates", type=int, default=100, help="simulated runs per scenario and size")
    parser.add_argument("--methods", type=int, default=1, help="methods per run (Holm over 2 x methods p-values)")
    parser.add_argument(
        "--sizes", nargs="+", default=["2x32", "3x32", "2x64", "2x128"], help="designs as LADDERSxSCENES"
    )
    parser.add_argument("--rungs", type=int, default=P2Design().rungs)
    parser.add_argument("--resamples", type=int, default=P2Design().resamples)
    parser.add_argument("--permutations", type=int, default=P2Design().permutations)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--association",
        choices=ASSOCIATIONS,
        default=P2Design().association,
        help="the scale of the association (faithclip.audit.p2stats): within-rung ranks, or the raw values",
    )
    parser.add_argument("--progress", action="store_true", help="print each row to stderr as it is measured")
    parser.add_argument(
        "--spread",
        action="store_true",
        help="print only the spread of each scenario kind at the first size (SCENE_SD's calibration)",
    )
    parser.add_argument(
        "--grid",
        default=None,
        metavar="SETSxLADDERSEEDS",
        help="print only how often a grid of runs (e.g. 3x3, as p2_replicate runs) gives the same verdict in every "
        "cell, at each size and at mean r in " + ", ".join(f"{r:g}" for r in GRID_RS),
    )
    args = parser.parse_args(argv)
    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
        grid = tuple(int(v) for v in args.grid.lower().split("x")) if args.grid else (1, 1)
    except ValueError:
        sizes, grid = [], ()
    if (
        not sizes
        or any(len(size) != 2 for size in sizes)
        or min(
            args.replicates, args.methods, args.rungs, args.resamples, args.permutations, *(v for s in sizes for v in s)
        )
        < 1
        or len(grid) != 2
        or min(grid) < 1
    ):
        print(
            "p2_simulate: sizes are LADDERSxSCENES (e.g. 3x48), a grid is SETSxLADDERSEEDS (e.g. 3x3), and every "
            "number must be at least 1.",
            file=sys.stderr,
        )
        return 2
    design = P2Design(resamples=args.resamples, permutations=args.permutations, association=args.association)
    started = time.perf_counter()
    if args.spread:
        print("\n".join(spread(*sizes[0], args.rungs, args.replicates, design, args.seed)))
        print(f"({time.perf_counter() - started:.0f} s)")
        return 0
    if args.grid:
        results = []
        for ladders, scenes in sizes:
            for r in GRID_RS:
                rates = grid_agreement(
                    r, (ladders, scenes, args.rungs), args.replicates, args.methods, design, grid, args.seed
                )
                results.append({"ladders": ladders, "scenes": scenes, "r": r, **rates})
                if args.progress:
                    print(format_grid_row(results[-1]), file=sys.stderr, flush=True)
        print(format_grid(results, args.replicates, args.methods, grid, design))
        print(f"({time.perf_counter() - started:.0f} s)")
        return 0
    report = (lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None
    rows = operating_characteristics(sizes, args.rungs, args.replicates, args.methods, design, args.seed, report)
    print(format_table(rows, args.replicates, args.methods, design))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
