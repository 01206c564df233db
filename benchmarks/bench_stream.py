"""Streaming (this checkout) against the former ``--images-per-step N`` of an earlier commit, in one run:

    python benchmarks/bench_stream.py [--ref 17caf1d] [--images 16] [--pairs 4] [--step 16]

Before streaming, ``evaluate --images-per-step N`` computed the maps of N images and then scored all their
curves' perturbed images back to back in forwards of the batch size; streaming scores them as each forward
fills. Both use the same forwards (same count and shapes). This prints, for ``--pairs`` pairs run one after
the other (this checkout first, then the reference: the order is the same in every pair, the pairs
interleave so that a change of machine load hits both), the wall-clock seconds of each evaluate command and
its records' compute seconds per image; the paired difference (this checkout minus the reference) with a
95 % t-interval over the pairs; and whether every number of every record is the same in both (timings
aside). The evaluate settings are bench_scale.py's (ViT-B/32 random weights, shapes at 224 px, grad_eclip,
Grad-ECLIP deletion and insertion, batch 32, one thread). The reference's source is taken with ``git
archive``; the load average is printed before and after (the machine's 2 cores are shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import bench_scale

ROOT = Path(__file__).resolve().parents[1]


def reference_source(ref: str, into: Path) -> Path:
    """``ref``'s ``src`` folder, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean of the paired differences and its 95 % t-interval (Student's t with n - 1 degrees of freedom)."""
    from scipy.stats import t

    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, float("nan"), float("nan")
    half = t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="17caf1d", help="the commit of the former setting (before streaming)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--step", type=int, default=16, help="the reference's --images-per-step")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    old_src = reference_source(args.ref, base / "ref")
    model = bench_scale.save_model(base / "model")
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    rows, same = [], True
    for pair in range(args.pairs):
        new_out, old_out = base / f"new-{pair}", base / f"old-{pair}"
        new_wall = bench_scale.evaluate(model, new_out, args.images)
        old_wall = bench_scale.evaluate(model, old_out, args.images, "--images-per-step", str(args.step), src=old_src)
        new_image, old_image = (bench_scale.compute_seconds(out) / args.images for out in (new_out, old_out))
        same = same and bench_scale.numbers(new_out) == bench_scale.numbers(old_out)
        rows.append((new_wall, old_wall, new_image, old_image))
        print(
            f"pair {pair + 1}: streaming {new_wall:.1f} s wall, {new_image:.3f} s/image; {args.ref} "
            f"--images-per-step {args.step} {old_wall:.1f} s wall, {old_image:.3f} s/image",
            flush=True,
        )
    for name, column in (("wall s", 0), ("s/image", 2)):
        old_mean = statistics.fmean(row[column + 1] for row in rows)
        mean, low, high = paired_interval([row[column] - row[column + 1] for row in rows])
        print(
            f"streaming - reference, {name}: {mean:+.3f} [{low:+.3f}, {high:+.3f}] over {len(rows)} pairs "
            f"({100 * mean / old_mean:+.1f} % [{100 * low / old_mean:+.1f}, {100 * high / old_mean:+.1f}] of the "
            f"reference's mean {old_mean:.3f})"
        )
    print(f"every number of every record the same: {same}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
