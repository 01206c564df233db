"""Scene-generation throughput of the shapes world: ``python benchmarks/bench_scenes.py [size] [n]``.

Prints scenes per second for 1-4 object scenes and for the single-object view (target: >= 2,000
scenes/s at 64 px on 2 cores). Best of three runs, after one warm-up batch.
"""

from __future__ import annotations

import sys
import time

from faithclip.shapes.world import ShapesWorld


def scenes_per_second(world: ShapesWorld, n: int, single: bool) -> float:
    best = float("inf")
    for repeat in range(3):
        start = time.perf_counter()
        if single:
            world.single_object_set(n, seed=repeat)
        else:
            world.sample(n, 1, 4, seed=repeat)
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    world = ShapesWorld(image_size=size, seed=0)
    world.sample(64, seed=99)  # warm-up
    print(f"{size} px, 1-4 objects: {scenes_per_second(world, n, single=False):,.0f} scenes/s")
    print(f"{size} px, 1 object:    {scenes_per_second(world, n, single=True):,.0f} scenes/s")


if __name__ == "__main__":
    main()
