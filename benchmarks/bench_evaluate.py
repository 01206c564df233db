"""Throughput of evaluate per method, against its ceiling: images per minute with the default setting and
with the best one, and the ratio of each to the limit the protocol sets.

    python benchmarks/bench_evaluate.py [--arch B/32] [--images 8] [--threads 1]
        [--methods grad_eclip,attention_eclip] [--metrics deletion_gradeclip,insertion_gradeclip]
        [--batch-sizes 16,32] [--rise-masks 100]

Model: the real ViT architecture (``--arch``, shipped config and tokenizer) with random weights; data: the
shapes world at 224 px (the first ``--images`` scenes). For each method, one ``Evaluator.run`` per batch size
(the only setting left that moves the speed: every forward is full since the perturbed images of
consecutive images are streamed; the default is 32); images per minute from the records' seconds (maps,
metrics and their share of the forwards; prompt encoding and preprocessing excluded, as model loading).
Only the run's last forward is padded: with few images, a batch size that does not divide the perturbed
images (8 x 20 = 160 here) pays for its padding, which a long run does not.

The limit: the images the protocol sends through the image tower per image (``evaluation/cost.py``: the
map's forwards, counted as one for a gradient method, its backward left out; each curve's perturbed images;
the unperturbed image) times the cost of one image in a full forward of the default batch size, measured
(median of 3, after a warm-up) just before that method's runs. ``ratio`` = images per minute / limit: 1
would be nothing but the forwards the protocol needs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

from faithclip.data.folders import shapes_set
from faithclip.evaluation import EvalConfig, Evaluator, cost
from faithclip.models.random_init import random_clip

DEFAULT_BATCH = EvalConfig.__dataclass_fields__["batch_size"].default


def forward_seconds(evaluator: Evaluator, data, batch: int) -> float:
    """Seconds per image of one full forward of ``batch`` images (``Evaluator.forward_seconds``: the median of
    3, after a warm-up), on the run's own scoring context."""
    with tempfile.TemporaryDirectory() as out:
        evaluator._start_cases(data, out)  # the prompts' classifier weights
    return evaluator.forward_seconds(size=batch)


def images_per_minute(handle, data, config: EvalConfig) -> float:
    with tempfile.TemporaryDirectory() as out:
        results = Evaluator(handle, config).run(data, out, progress=False, report=False)
    return 60 * len(data) / sum(record["seconds"] for record in results["per_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="B/32", choices=["B/32", "B/16"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="grad_eclip,attention_eclip")
    parser.add_argument("--metrics", default="deletion_gradeclip,insertion_gradeclip")
    parser.add_argument("--batch-sizes", default="16,32")
    parser.add_argument("--rise-masks", type=int, default=100, help="RISE's masks (its default, 4,000, takes hours)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    handle = random_clip(architecture=args.arch, patch_size=16 if args.arch == "B/16" else None)
    data = shapes_set(image_size=224, count=args.images)
    metrics = args.metrics.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if DEFAULT_BATCH not in batches:
        batches.insert(0, DEFAULT_BATCH)
    print(
        f"ViT-{args.arch} (random weights), 224 px, {args.images} shapes images, metrics {args.metrics}, "
        f"{args.threads} thread(s), torch {torch.__version__}; rise with {args.rise_masks} masks; batch sizes "
        f"{','.join(map(str, batches))} (default {DEFAULT_BATCH}); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"{'method':<16} {'forwards':>8} {'ms/fwd':>7} {'limit/min':>9} {'default/min':>11} {'ratio':>6} "
        f"{'best/min':>9} {'best':>8} {'ratio':>6}"
    )
    for method in args.methods.split(","):
        options = {"rise": {"masks": args.rise_masks}} if method == "rise" else {}

        def config(batch: int) -> EvalConfig:
            return EvalConfig(
                model=args.arch, data="shapes", methods=[method], metrics=metrics, method_options=options,
                batch_size=batch, examples=0,
            )  # fmt: skip

        seconds = forward_seconds(Evaluator(handle, config(DEFAULT_BATCH)), data, DEFAULT_BATCH)
        per_image = cost.record_forwards(method, metrics, handle, options.get(method, {}), {})
        forwards = sum(per_image.values()) + 1  # and the unperturbed image
        limit = 60 / (forwards * seconds)
        speeds = {batch: images_per_minute(handle, data, config(batch)) for batch in batches}
        best = max(speeds, key=speeds.get)
        default = speeds[DEFAULT_BATCH]
        print(
            f"{method:<16} {forwards:>8} {1000 * seconds:>7.1f} {limit:>9.1f} {default:>11.1f} {default / limit:>6.2f} "
            f"{speeds[best]:>9.1f} {'batch ' + str(best):>8} {speeds[best] / limit:>6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
