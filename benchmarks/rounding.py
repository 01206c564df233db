"""How far two code paths that compute the same quantity drift apart, per dtype: the data behind
``faithclip.numerics.ROUNDING_RTOL`` (docs/testing.md).

    python benchmarks/rounding.py [--models shapes-clip,shapes-vit,shapes-siglip,b32] [--images 8]

For each model and dtype it explains ``--images`` shapes scenes against two prompts with Attention-ECLIP and
Grad-ECLIP, along three paths that must give the same numbers up to rounding:

- ``batch``: all images in one batch (the reference path);
- ``single``: one image per call (other matrix shapes, so other kernels);
- ``threads``: the batch on one intra-op thread instead of the machine's default;

and compares, per path, the explained score with the model's own score (``score vs own``: the model's
forward without gradients vs the probed forward with gradients) and each path's scores and maps with the
reference path's. A score's difference is relative to ``max(|a|, |b|, 1)``, a map's to its largest value.
It prints the largest relative difference per model, dtype and comparison, and the largest per dtype.
``b32`` is the ViT-B/32 architecture with random weights (shipped config, no download).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from PIL import Image

import faithclip
from faithclip.numerics import ROUNDING_RTOL, relative_difference
from faithclip.shapes.world import ShapesWorld

DTYPES = ("float64", "float32", "bfloat16", "float16")
METHODS = ("attention_eclip", "grad_eclip")


def load(name: str, dtype: str):
    from faithclip.models.loading import place

    if name == "b32":
        from faithclip.models.random_init import random_clip

        handle = random_clip(None, seed=0, name="ViT-B/32 (random weights)")
        handle.model.to(getattr(torch, dtype))
        return handle
    if dtype == "float64":  # no --dtype float64 in the product; the tests' oracles run in it
        return place(faithclip.load(name), dtype=torch.float64)
    return faithclip.load(name, dtype=dtype)


def texts_for(handle) -> list[str]:
    from faithclip.stand_ins import class_names

    return class_names(handle)[:2] if handle.family.name == "vit" else ["a red circle", "a blue square"]


def run(handle, images, texts, method, per_image: bool):
    if per_image:
        out = []
        for image in images:
            out.extend(faithclip.explain(handle, [image], texts, method))
        return out
    return faithclip.explain(handle, images, texts, method)


def measure(name: str, dtype: str, count: int) -> dict[str, float]:
    handle = load(name, dtype)
    world = ShapesWorld(image_size=64)
    images = [Image.fromarray(array) for array in world.sample(count, seed=0).images]
    texts = texts_for(handle)
    worst = {
        "score vs own": 0.0,
        "scores, single": 0.0,
        "maps, single": 0.0,
        "scores, threads": 0.0,
        "maps, threads": 0.0,
    }
    threads = torch.get_num_threads()
    for method in METHODS:
        batch = run(handle, images, texts, method, per_image=False)
        single = run(handle, images, texts, method, per_image=True)
        torch.set_num_threads(1)
        try:
            one_thread = run(handle, images, texts, method, per_image=False)
        finally:
            torch.set_num_threads(threads)
        for path, explanations in (("single", single), ("threads", one_thread)):
            for ref, other in zip(batch, explanations):
                worst[f"scores, {path}"] = max(worst[f"scores, {path}"], relative_difference(ref.score, other.score))
                worst[f"maps, {path}"] = max(worst[f"maps, {path}"], relative_difference(ref.map, other.map, 0.0))
        for ex in batch + single + one_thread:
            worst["score vs own"] = max(worst["score vs own"], relative_difference(ex.score, ex.model_score))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="shapes-clip,shapes-vit,shapes-siglip,b32")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    args = parser.parse_args(argv)
    print(
        f"# {platform.processor() or platform.machine()} | {cpu_name()} | torch {torch.__version__} | "
        f"{torch.get_num_threads()} threads | {args.images} images x 2 prompts x {len(METHODS)} methods"
    )
    columns = ("score vs own", "scores, single", "maps, single", "scores, threads", "maps, threads")
    print("| model | dtype | " + " | ".join(columns) + " | seconds |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    per_kind: dict[tuple[str, str], float] = {}  # (kind, dtype) -> the largest difference of that kind
    for name in args.models.split(","):
        for dtype in args.dtypes.split(","):
            started = time.perf_counter()
            worst = measure(name, dtype, args.images if name != "b32" else min(args.images, 4))
            seconds = time.perf_counter() - started
            for column, value in worst.items():
                key = ("map" if column.startswith("maps") else "value", dtype)
                per_kind[key] = max(per_kind.get(key, 0.0), value)
            print(
                f"| {name} | {dtype} | " + " | ".join(f"{worst[c]:.1e}" for c in columns) + f" | {seconds:.0f} |",
                flush=True,
            )
    print("\n| kind | dtype | largest relative difference | ROUNDING_RTOL | bound / largest |")
    print("|---|---|---|---|---|")
    for (kind, dtype), value in sorted(per_kind.items()):
        bound = ROUNDING_RTOL[kind][dtype]
        ratio = f"{bound / value:.0f}" if value else "inf"
        print(f"| {kind} | {dtype} | {value:.1e} | {bound:.1e} | {ratio} |")
    return 0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
