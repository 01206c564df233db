"""Scaling evaluate (issue 15): processes and bfloat16 -- in one run, on this machine. (Images per step are
gone: the curves' images are streamed into full forwards; bench_evaluate.py prints the throughput per method.)

    python benchmarks/bench_scale.py [--images 80] [--json scale.json]

Model: the real ViT-B/32 architecture with random weights (the shipped config and OpenAI tokenizer),
saved once into a temporary directory; data: the shapes world rendered at 224 px (the first --images
scenes). Every evaluate runs as its own process with ONE thread (OMP_NUM_THREADS=1, --threads 1), method
grad_eclip, metrics zeroshot + the Grad-ECLIP deletion and insertion protocols (21 forwards and one
backward per image), batch 32. Reported:

1. evaluate with 1 process and with 2 (torchrun, gloo): wall-clock seconds from launch to results (start-up,
   model load and the merge included) and the compute seconds summed from the records; the speed-up of each;
   whether the two results.json are identical (timings aside);
2. bfloat16 against float32: evaluate's seconds per image, and the largest difference of the Grad-ECLIP
   and Attention-ECLIP maps relative to the float32 map's maximum, over the first 8 scenes.
The load average is printed before and after: the machine's 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def save_model(directory: Path) -> Path:
    from faithclip.models.random_init import random_clip

    handle = random_clip(architecture="B/32")
    handle.model.save_pretrained(directory)
    handle.tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(handle.preprocess.to_dict(), indent=1))
    return directory


def evaluate(model: Path, out: Path, images: int, *extra: str, processes: int = 1, src: Path = SRC) -> float:
    """Wall-clock seconds of one evaluate command (1 process, or ``processes`` under torchrun), of the faithclip
    in ``src`` (this checkout's by default)."""
    command = [
        "-m",
        "faithclip",
        "evaluate",
        "--model",
        str(model),
        "--data",
        "shapes",
        "--count",
        str(images),
        "--methods",
        "grad_eclip",
        "--metrics",
        "zeroshot,deletion_gradeclip,insertion_gradeclip",
        "--threads",
        "1",
        "--examples",
        "0",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]
    if processes > 1:
        command = [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc-per-node",
            str(processes),
            *command,
        ]
    else:
        command = [sys.executable, *command]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def numbers(out: Path) -> tuple[list, dict]:
    saved = json.loads((out / "results.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in saved["per_image"]], saved["aggregate"]


def compute_seconds(out: Path) -> float:
    return sum(r["seconds"] for r in json.loads((out / "results.json").read_text())["per_image"])


def map_difference(model: Path, scenes: int = 8) -> dict[str, float]:
    import torch

    import faithclip
    from faithclip.shapes.world import ShapesWorld

    torch.set_num_threads(1)
    full, half = faithclip.load(str(model)), faithclip.load(str(model), dtype="bfloat16")
    batch = ShapesWorld(image_size=224, seed=0).multi_object_set(scenes, seed=10**12 + 2)
    worst: dict[str, float] = {}
    for method in ("grad_eclip", "attention_eclip"):
        for index in range(scenes):
            scene = batch.scene(index)
            a = faithclip.explain(full, scene.image, scene.caption, method).map.double()
            b = faithclip.explain(half, scene.image, scene.caption, method).map.double()
            worst[method] = max(worst.get(method, 0.0), float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--step-images", type=int, default=16, help="images of the dtype runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict = {
        "images": args.images,
        "load_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"load average before: {report['load_before']}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        model = save_model(base / "model")
        one = evaluate(model, base / "p1", args.images)
        two = evaluate(model, base / "p2", args.images, processes=2)
        same = numbers(base / "p1") == numbers(base / "p2")
        report["processes"] = {
            "1": {"wall": one, "compute": compute_seconds(base / "p1")},
            "2": {"wall": two, "compute": compute_seconds(base / "p2")},
            "identical": same,
        }
        print(
            f"processes: 1 -> {one:.1f} s, 2 -> {two:.1f} s wall ({one / two:.2f}x; {args.images / one * 60:.1f} "
            f"and {args.images / two * 60:.1f} images/min); results identical: {same}",
            flush=True,
        )
        count = args.step_images
        precision = {}
        for dtype in ("float32", "bfloat16"):
            out = base / f"dtype-{dtype}"
            wall = evaluate(model, out, count, "--dtype", dtype)
            precision[dtype] = {"wall": wall, "per_image": compute_seconds(out) / count}
            print(f"{dtype}: {precision[dtype]['per_image']:.3f} s/image (records), {wall:.1f} s wall", flush=True)
        precision["map_difference"] = map_difference(model)
        print(f"bfloat16 map difference (max |bf16 - fp32| / max |fp32|, 8 scenes): {precision['map_difference']}")
        report["precision"] = precision
    report["load_after"] = os.getloadavg()
    print(f"load average after: {report['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
