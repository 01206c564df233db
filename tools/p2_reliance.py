"""Add the model's ``reliance`` to P2 runs kept before it existed.

    python tools/p2_reliance.py DIR [DIR ...] [--copy-from SOURCE]

P2's primary pair became (reliance, share) on 2026-12-03 (``faithclip.audit.p2``): ``reliance`` is the
model's own share of the named object among the scene's objects, from erasing each object in turn. It needs the
model on every rung, not the maps, so a run kept by ``python -m faithclip.audit.p2_replicate --save`` before
then can be completed without measuring its maps again: per run (``DIR/scenesS_laddersL.json``) this rebuilds
the run's scenes and rungs from its design, model and alphas, checks that the model's per-scene ``effect`` and
``margin`` come out as kept (within ``p2_replicate.JOIN_TOLERANCE``: the same rungs, up to float rounding), and
writes the run back with ``reliance`` added (``faithclip.files.write_atomic``: nothing half-written). A run
that already holds it is left alone. On one thread, as the runs were measured. ``--copy-from SOURCE`` takes each cell's ``reliance`` from
the same cell kept in SOURCE (another part of the same grid, joined with ``--load A,B``) instead, after checking
that the two runs are the same measurement of the model (``p2_replicate.join_runs``' rule).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from faithclip.files import OutputError, write_atomic


def add_reliance(path: Path, handle) -> str:
    from faithclip.audit.ladder import degrade
    from faithclip.audit.p2 import P2Design, model_measures, scene_pairs
    from faithclip.audit.p2_replicate import JOIN_TOLERANCE

    run = json.loads(path.read_text())
    kept = run["per_scene"]["model"]
    if "reliance" in kept:
        return f"{path}: holds reliance already"
    if run["model"] != handle.name:
        raise ValueError(f"measured {run['model']}, not {handle.name}")
    design = P2Design(**run["design"])
    started = time.perf_counter()
    pairs = scene_pairs(handle, design.scenes, design.scene_seed)
    reliance = np.zeros((design.ladders, design.scenes, design.rungs))
    trained = None
    for l, ladder in enumerate(run["ladders"]):
        for v, alpha in enumerate(ladder["alphas"]):
            if alpha == 0.0 and trained is not None:  # the trained model, the same on every ladder
                measures = trained
            else:
                measures = model_measures(degrade(handle, alpha, ladder["seed"], design.reinit), pairs)
                trained = measures if alpha == 0.0 else trained
            for name in ("effect", "margin"):
                gap = float(np.max(np.abs(measures[name] - np.asarray(kept[name])[l, :, v])))
                if gap > JOIN_TOLERANCE:
                    raise ValueError(f"ladder {ladder['seed']} rung {v}: {name} differs from the kept run by {gap}")
            reliance[l, :, v] = measures["reliance"]
    kept["reliance"] = reliance.tolist()
    write_atomic(path, json.dumps(run).encode())
    return f"{path}: reliance added in {time.perf_counter() - started:.0f} s"


def copy_reliance(path: Path, source: Path) -> str:
    from faithclip.audit.p2_replicate import join_runs

    run, other = json.loads(path.read_text()), json.loads((source / path.name).read_text())
    if "reliance" in run["per_scene"]["model"]:
        return f"{path}: holds reliance already"
    if "reliance" not in other["per_scene"]["model"]:
        raise ValueError(f"{source / path.name} holds no reliance to copy")
    mine = {**other, "per_scene": {**other["per_scene"], "model": dict(other["per_scene"]["model"])}}
    mine["per_scene"]["model"].pop("reliance")
    join_runs([mine, run])  # raises ValueError unless the two are the same measurement of the model
    run["per_scene"]["model"]["reliance"] = other["per_scene"]["model"]["reliance"]
    write_atomic(path, json.dumps(run).encode())
    return f"{path}: reliance copied from {source / path.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--copy-from", type=Path, default=None, help="a folder of the same cells holding reliance")
    args = parser.parse_args(argv)
    handles = {}

    def handle_of(model: str):  # loaded once per model, and only when a run must be measured
        if model not in handles:
            import torch

            from faithclip.models.loading import load

            torch.set_num_threads(1)
            handles[model] = load(model)
        return handles[model]

    for folder in args.folders:
        for path in sorted(folder.glob("scenes*_ladders*.json")):
            try:
                if args.copy_from is not None:
                    print(copy_reliance(path, args.copy_from), flush=True)
                    continue
                print(add_reliance(path, handle_of(json.loads(path.read_text())["model"])), flush=True)
            except (ValueError, KeyError, OSError, OutputError) as error:
                print(f"p2_reliance: {path}: {error}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
