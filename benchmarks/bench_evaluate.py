"""Throughput of the full Grad-ECLIP evaluation protocol on the ViT-B/16 architecture (random weights).

Per image: one Grad-ECLIP map (one forward + the batched backward), the unperturbed score, and the
Grad-ECLIP deletion and insertion protocols (10 + 10 perturbed 224 x 224 images scored in batches).
Text embeddings of the prompt set are computed once and excluded, as is model construction.

    python benchmarks/bench_evaluate.py [--images 8] [--threads 1] [--batch-size 32] [--methods grad_eclip]

Prints images per minute; no weights are needed (the real B/32 config with patch 16, random weights,
the real CLIP tokenizer from ../shared/reference).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
import transformers

from faithclip.data.folders import shapes_set
from faithclip.evaluation import EvalConfig, Evaluator
from faithclip.models.loading import from_hf
from faithclip.models.preprocess import ImagePreprocess

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "openai-clip-vit-base-patch32"


def b16_handle():
    config = transformers.CLIPConfig.from_pretrained(REFERENCE)
    config.vision_config.patch_size = 16
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    model.set_attn_implementation("eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE)
    return from_hf(
        model,
        tokenizer,
        preprocess=ImagePreprocess.from_json(REFERENCE / "preprocessor_config.json"),
        name="ViT-B/16 (random weights)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", default="grad_eclip")
    parser.add_argument("--metrics", default="deletion_gradeclip,insertion_gradeclip")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    handle = b16_handle()
    data = shapes_set(image_size=224, count=args.images)
    config = EvalConfig(
        model="ViT-B/16 random",
        data="shapes",
        methods=args.methods.split(","),
        metrics=args.metrics.split(","),
        batch_size=args.batch_size,
        examples=0,
    )
    evaluator = Evaluator(handle, config)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        results = evaluator.run(data, out, progress=False, report=False)
        total = time.perf_counter() - started
    times = [record["seconds"] for record in results["per_image"]]  # each record's maps + metrics (its scoring share)
    per_image = sum(times) / args.images
    print(
        f"ViT-B/16 (random weights), 224 px, methods {args.methods}, metrics {args.metrics}, "
        f"batch {args.batch_size}, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        f"{args.images} images: {sum(times):.1f} s in metrics+maps ({per_image:.2f} s per image), "
        f"{total:.1f} s in all (with prompt encoding and preprocessing)"
    )
    print(f"throughput: {60 / per_image:.1f} images per minute")


if __name__ == "__main__":
    main()
