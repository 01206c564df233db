"""Cost per map of MaskCLIP, CLIP Surgery, M2IB, RISE and occlusion, as a ratio to one plain no-grad forward.

Model: the ViT-B/16 architecture with random weights (the B/32 config of ../shared/reference with
``vision_config.patch_size = 16``), eager attention, float32, CPU, one thread. One 224 px image, one text.
Image-side costs are divided by one plain no-grad image forward; text-side costs by one plain no-grad
text forward. Each method call builds a fresh ``Context`` (so the fixed embeddings of the other tower
are included, as in ``faithclip.explain``). RISE is timed with ``--rise-masks`` masks (default 400) and
scaled linearly to its default 4000 (its cost is the masked forwards, linear in N).

    python benchmarks/bench_methods_other.py [--rise-masks 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from faithclip.api import method_spec
from faithclip.methods.context import Context
from faithclip.models.random_init import random_clip
from faithclip.targets import Target

logger = logging.getLogger("bench_methods_other")
B32_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-clip-vit-base-patch32"


def b16_handle():
    return random_clip(B32_DIR, patch_size=16, name="ViT-B/16 (random weights)")


def seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rise-masks", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast measurements (median)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    handle = b16_handle()
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    text = handle.tokens("a photo of a cat on a sofa")

    def context(side: str) -> Context:
        return Context(handle=handle, side=side, pixels=pixels, text=text, target=Target())

    with torch.no_grad():
        handle.encode_image(pixels)  # warm-up
        image_forward = seconds(lambda: handle.encode_image(pixels), max(args.repeats, 5))
        text_forward = seconds(lambda: handle.encode_text(text), max(args.repeats, 5))
    logger.info("plain no-grad forward: image %.3f s, text %.4f s", image_forward, text_forward)

    runs = [  # (name, side, options, repeats, scale)
        ("maskclip", "image", {}, args.repeats, 1.0),
        ("clip_surgery", "image", {}, args.repeats, 1.0),
        ("m2ib", "image", {}, 1, 1.0),
        ("occlusion", "image", {}, 1, 1.0),
        ("rise", "image", {"masks": args.rise_masks}, 1, 4000 / args.rise_masks),
        ("m2ib", "text", {}, 1, 1.0),
        ("occlusion", "text", {}, args.repeats, 1.0),
    ]
    results = []
    for name, side, options, repeats, scale in runs:
        runner = getattr(method_spec(name, side), side)
        elapsed = seconds(lambda: runner(context(side), **options), repeats) * scale
        base = image_forward if side == "image" else text_forward
        results.append(
            {
                "method": name,
                "side": side,
                "options": options,
                "seconds_per_map": elapsed,
                "ratio_to_plain_forward": elapsed / base,
                "note": f"timed with {args.rise_masks} masks, scaled x{scale:g} to 4000" if scale != 1 else "",
            }
        )
        logger.info(
            "%-13s %-5s %8.2f s/map  %8.1f x plain %s forward  %s",
            name,
            side,
            elapsed,
            elapsed / base,
            side,
            results[-1]["note"],
        )
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "model": handle.name,
                    "threads": 1,
                    "image_forward_s": image_forward,
                    "text_forward_s": text_forward,
                    "results": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
