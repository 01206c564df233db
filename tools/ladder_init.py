"""Does a ladder seed re-create a model's own training initialisation?

    python tools/ladder_init.py [--models shapes-clip,shapes-vit,shapes-siglip] [--seeds 0,1,3] [--reinit seed]
                                [--load DIR[,DIR]]

``faithclip.audit.ladder.degrade(handle, alpha, seed)`` draws its re-initialised copy of the model after
``torch.manual_seed(seed)``. A model built after the same ``torch.manual_seed`` (the shipped shapes models were,
with the seed in their TRAINING.json) is re-initialised to its OWN initial weights by that ladder seed, not to
a random one. Per model this prints the Euclidean distance between the trained parameters and each seed's
re-initialised copy (every floating-point parameter but the logit scale and bias, the ones ``degrade`` moves):
a seed much nearer than the others is the model's own initialisation. ``--reinit spawned`` measures the
re-initialisation that no training seed meets (``faithclip.audit.ladder.reinit_seed``) instead.

``--load`` (a grid kept by ``python -m faithclip.audit.p2_replicate --save``, several folders joined as
``--load`` joins them, with its ``--model``, ``--scene-seeds`` and ``--ladder-seeds``) adds, per ladder, the
last alpha of its rungs in each scene set (where the scan found chance) and, per method, that ladder's r
(``p2_replicate.ladder_table``, the mean over the scene sets) against the other ladders' mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def init_distances(handle, seeds: list[int], reinit: str = "seed") -> dict[int, float]:
    """``{seed: ||trained - re-initialised(seed)||}`` over the parameters ``degrade`` interpolates."""
    from faithclip.audit.ladder import interpolated, reinitialised_state

    trained = [(name, p) for name, p in handle.model.named_parameters() if interpolated(name, p)]
    out = {}
    for seed in seeds:
        fresh = reinitialised_state(handle.model, seed, reinit)
        total = sum(float(((p.detach().double() - fresh[name].double()) ** 2).sum()) for name, p in trained)
        out[seed] = total**0.5
    return out


def grid_lines(folders: list[Path], model: str, scene_seeds: list[int], ladder_seeds: list[int]) -> list[str]:
    from faithclip.audit.p2_replicate import ladder_table, load_runs

    runs = load_runs(folders, [(s, l) for s in scene_seeds for l in ladder_seeds], None)
    first = runs[(scene_seeds[0], ladder_seeds[0])]
    per_cell = len(first["ladders"])
    ladders = [l + k for l in ladder_seeds for k in range(per_cell)]
    lines = [f"{model}, grid {folders[0].name}: last alpha of each ladder per scene set {scene_seeds}"]
    for j, ladder in enumerate(ladders):
        cell, k = ladder_seeds[j // per_cell], j % per_cell
        alphas = [runs[(s, cell)]["ladders"][k]["alphas"][-1] for s in scene_seeds]
        lines.append(f"  ladder {ladder}: " + ", ".join(f"{a:.2f}" for a in alphas))
    lines.append(f"  per method: r of ladder {ladders[0]} (mean over scene sets) against the other ladders' mean")
    differences = []
    for method in first["methods"]:
        table = ladder_table(runs, method)
        own, others = float(table[:, 0].mean()), float(table[:, 1:].mean())
        differences.append(own - others)
        lines.append(f"  {method:20s} {own:+.3f} against {others:+.3f}: {own - others:+.3f}")
    lines.append(f"  mean difference over {len(differences)} methods: {np.mean(differences):+.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from faithclip.audit.ladder import REINITS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="shapes-clip,shapes-vit,shapes-siglip")
    parser.add_argument("--seeds", default="0,1,3")
    parser.add_argument("--reinit", choices=REINITS, default="seed", help="degrade's reinit")
    parser.add_argument("--load", default=None, help="a kept grid (comma-separated folders, joined)")
    parser.add_argument("--scene-seeds", default="2,3,4")
    parser.add_argument("--ladder-seeds", default="0,3,6")
    args = parser.parse_args(argv)
    from faithclip.models.loading import load

    seeds = [int(v) for v in args.seeds.split(",")]
    for name in args.models.split(","):
        distances = init_distances(load(name), seeds, args.reinit)
        print(
            f"{name}: distance to the re-initialised copy, "
            + ", ".join(f"seed {s} {d:.1f}" for s, d in distances.items())
        )
        if args.load:
            folders = [Path(folder) for folder in args.load.split(",")]
            scene_seeds = [int(v) for v in args.scene_seeds.split(",")]
            ladder_seeds = [int(v) for v in args.ladder_seeds.split(",")]
            print("\n".join(grid_lines(folders, name, scene_seeds, ladder_seeds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
