"""Cost of one map per attention/gradient method, as a multiple of one plain no-grad image forward.

Architecture: ViT-B/16 (the ViT-B/32 config of ../shared/reference with ``vision_config.patch_size=16``:
224 px, 14x14 patches, 12 layers, 12 heads) with RANDOM weights -- cost does not depend on the weights.
One image, one prompt, CPU, one thread; each ratio is the median over ``--repeats`` rounds of (method time /
time of a plain forward run just before it), after a warm-up.
A method's time covers everything ``faithclip.explain`` runs for the map: a fresh ``Context`` (so the
text is encoded each time), the probed forward, the gradients and the map math.

    python benchmarks/bench_methods_attention.py [--repeats 5] [--methods game legrad] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import faithclip.methods  # noqa: F401  (registers the methods)
from faithclip.methods.context import Context
from faithclip.models.random_init import random_clip
from faithclip.registry import METHODS
from faithclip.targets import make_target

B32_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-clip-vit-base-patch32"
METHOD_NAMES = ("self_attention", "rollout", "game", "grad_cam", "legrad")
REFERENCE_NAMES = ("attention_eclip", "grad_eclip")  # the core methods, for scale
VARIANTS = ("game:start_layer=-1", "legrad:start_layer=0")  # the official GAME CLIP setting; LeGrad on all layers


def parse(entry: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` (integer values where they parse) -> name, options."""
    name, _, rest = entry.partition(":")
    options = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, options


def vit_b16(reference: Path):
    return random_clip(reference, patch_size=16, name="ViT-B/16 (random weights)")


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def paired_ratios(method, baseline, repeats: int) -> tuple[list[float], list[float]]:
    """Times of ``method`` and of the ``baseline`` run right before it, ``repeats`` times (after a warm-up).

    The machine is shared, so its speed drifts; a ratio of two adjacent timings is far steadier than a
    ratio of two medians taken minutes apart.
    """
    method(), baseline()  # warm-up
    method_times, ratios = [], []
    for _ in range(repeats):
        base = seconds(baseline)
        took = seconds(method)
        method_times.append(took)
        ratios.append(took / base)
    return method_times, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHOD_NAMES + VARIANTS + REFERENCE_NAMES),
        help="names, or name:key=value,... for non-default options",
    )
    parser.add_argument("--reference", type=Path, default=B32_DIR, help="directory of the ViT-B/32 config + tokenizer")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    handle = vit_b16(args.reference)
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 224, 224)
    text = handle.tokens("a photo of a cat")

    def plain_forward() -> None:
        with torch.no_grad():
            handle.encode_image(pixels)

    def one_map(entry: str) -> None:
        name, options = parse(entry)
        ctx = Context(handle=handle, side="image", pixels=pixels, text=text, target=make_target("cosine"))
        METHODS.get(name).image(ctx, **options)

    base_times, _ = paired_ratios(plain_forward, plain_forward, args.repeats)
    rows = {"forward (no grad)": {"seconds": statistics.median(base_times), "ratio": 1.0}}
    for name in args.methods:
        times, ratios = paired_ratios(lambda entry=name: one_map(entry), plain_forward, args.repeats)
        rows[name] = {
            "seconds": statistics.median(times),
            "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "options": {**METHODS.get(parse(name)[0]).defaults, **parse(name)[1]},
        }

    lines = ["| method | options | seconds per map | x plain forward (median, min-max) |", "|---|---|---|---|"]
    for name, row in rows.items():
        defaults = ", ".join(f"{k}={v}" for k, v in row.get("options", {}).items())
        spread = " ({:.2f}-{:.2f})".format(*row["ratio_range"]) if "ratio_range" in row else ""
        lines.append(f"| {parse(name)[0]} | {defaults} | {row['seconds']:.3f} | {row['ratio']:.2f}{spread} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": handle.name,
                    "threads": 1,
                    "repeats": args.repeats,
                    "torch": torch.__version__,
                    "results": rows,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
