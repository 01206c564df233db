"""A faithful-by-construction map on the kept P2 grids, on both association scales:

    python tools/p2_oracle.py RUN.json [RUN.json ...] [--fraction 0.1]

For each run kept by ``python -m faithclip.audit.p2_replicate --save DIR`` (its per-scene measures), a map
whose share on the named object is an increasing, saturating function of x, the model's measure of P2's primary
pair (its ``reliance``), ``share = x+ / (x+ + c)`` with ``x+ = max(x, 0)`` and ``c`` = ``--fraction`` times the
run's median absolute x, goes through P2's test (``faithclip.audit.p2.p2_statistics``, the run's design) on the
rank scale and on the raw scale. Its share moves with the model in every scene, so the test should say
``tracks``; docs/p2.md quotes what the raw scale says instead.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from faithclip.audit.p2 import P2Design, p2_statistics, pairs


def oracle_share(effect: np.ndarray, fraction: float) -> np.ndarray:
    positive = np.clip(effect, 0.0, None)
    scale = fraction * float(np.median(np.abs(effect)))
    return positive / (positive + scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args()
    print("| run | model | scale | r [95 %] | verdict |")
    print("|---|---|---|---|---|")
    for path in args.runs:
        run = json.loads(path.read_text())
        model = {k: np.asarray(v, dtype=np.float64) for k, v in run["per_scene"]["model"].items()}
        share = oracle_share(model[pairs(P2Design(**run["design"]))["primary"][0]], args.fraction)
        maps = {"oracle": {"share": share, "pointing": (share > 0.5).astype(np.float64)}}
        for association in ("ranks", "linear"):
            design = replace(P2Design(**run["design"]), association=association)
            entry = p2_statistics(model, maps, design)["primary"]["methods"]["oracle"]
            print(
                f"| {path.parent.name}/{path.name} | {run['model']} | {association} | "
                f"{entry['r']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}] | {entry['verdict']} |"
            )


if __name__ == "__main__":
    main()
