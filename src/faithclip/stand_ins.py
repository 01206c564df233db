"""Held-out figures of a shapes-world model of any family: ``python -m faithclip.stand_ins --model NAME``.

The shipped stand-ins (shapes-clip, shapes-vit, shapes-siglip) are judged by one command with one
definition, so their figures compare:

- **accuracy**: top-1 over the 30 classes on ``scenes`` held-out single-object scenes. A model with a
  text tower scores the 30 prompts (``world.prompts``) with its family's default score (CLIP: cosine,
  SigLIP: its logit); a classifier takes the argmax of its logits. Class ``c`` of the world is prompt
  ``c`` (or the classifier's label ``c``: the stand-ins are trained with the world's class order).
- **multi-object accuracy**: on held-out scenes with 2-4 objects, the top-1 class is one of the
  objects present.
- **pointing game**: on the same multi-object scenes, the map for the named object's prompt (class) is
  upsampled to the image (bilinear) and hits when its maximum lies within ``15 * size / 224`` px of the
  object's exact mask (the demo's tolerance; 4.3 px at 64 px), for Attention-ECLIP, raw last-layer
  attention (``self_attention``), occlusion (a perturbation baseline that reads only the model's score)
  and a uniform random map (the chance level of this scene layout).

Every rate carries a 95 % percentile bootstrap interval over scenes (2,000 resamples, seed 0). Held-out
scenes use world seed 0 and sample seeds from ``HELD_OUT_SEED`` on; training draws seeds 0, 1, 2, ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

HELD_OUT_SEED = 3 * 10**12  # far from the training seeds (0, 1, 2, ... one per step) and from the audit's
METHODS = ("attention_eclip", "self_attention", "occlusion")


def class_names(handle: Any) -> list[str]:
    """The 30 texts that name the world's classes for this model: prompts, or the classifier's labels."""
    from faithclip.shapes.world import ShapesWorld

    prompts = ShapesWorld(image_size=handle.image_size).prompts
    if handle.family.has_side("text"):
        return list(prompts)
    labels = getattr(handle.model.config, "id2label", {}) or {}
    if len(labels) != len(prompts):
        raise ValueError(f"a shapes-world classifier has {len(prompts)} labels; this one has {len(labels)}.")
    return [labels[index] for index in range(len(prompts))]


def class_scores(handle: Any, images: np.ndarray, names: list[str], batch_size: int = 256) -> torch.Tensor:
    """``(N, 30)`` scores of every image for every class, the family's default score, no gradients."""
    from faithclip.api import family_target
    from faithclip.methods.context import Context

    pixels = torch.stack([handle.preprocess.normalize(image) for image in images])  # (N, 3, S, S)
    target = family_target(handle, None)
    ctx = Context(
        handle=handle,
        side="image",
        pixels=pixels[:1].to(handle.device, handle.dtype),
        text=handle.tokens(names),
        target=target,
    )
    return ctx.score_images(pixels, batch_size=batch_size).float().cpu()


def rate(values: list[float] | np.ndarray) -> dict[str, float]:
    from faithclip.audit.bootstrap import Bootstrap, mean_interval

    return mean_interval(np.asarray(values, dtype=np.float64), Bootstrap())


def stand_in_figures(
    handle: Any, scenes: int = 1000, pointing_scenes: int = 300, seed: int = HELD_OUT_SEED, layers: int = 1
) -> dict:
    """Accuracy, multi-object accuracy and pointing game of ``handle`` on held-out shapes scenes;
    Attention-ECLIP over the last ``layers`` layers (1: the published default)."""
    from faithclip.api import explain
    from faithclip.metrics.case import pixel_map
    from faithclip.metrics.pointing import pointing_hit
    from faithclip.shapes.world import ShapesWorld

    size = handle.image_size
    world = ShapesWorld(image_size=size, seed=0)
    names = class_names(handle)
    single = world.single_object_set(scenes, seed=seed)
    with torch.no_grad():
        predicted = class_scores(handle, single.images, names).argmax(-1).numpy()
    accuracy = rate(predicted == single.target_labels)
    multi = world.multi_object_set(pointing_scenes, seed=seed + 1)
    with torch.no_grad():
        top = class_scores(handle, multi.images, names).argmax(-1).numpy()
    present = [bool(top[i] in set(multi.labels[i][multi.labels[i] >= 0].tolist())) for i in range(len(multi))]
    tolerance = round(15 * size / 224, 1)
    hits: dict[str, list[float]] = {name: [] for name in (*METHODS, "random")}
    generator = torch.Generator().manual_seed(0)
    for index, scene in enumerate(multi.scenes()):
        mask = torch.from_numpy(np.ascontiguousarray(scene.objects[scene.target].mask))
        text = names[int(multi.target_labels[index])]
        for method in METHODS:
            options = {"layers": layers} if method == "attention_eclip" else {}
            explanation = explain(
                handle, torch.as_tensor(handle.preprocess.normalize(scene.image)), text, method, **options
            )
            hits[method].append(pointing_hit(pixel_map(explanation.map, (size, size)), mask, tolerance))
        hits["random"].append(
            pointing_hit(torch.rand(size, size, generator=generator, dtype=torch.float64), mask, tolerance)
        )
    return {
        "model": handle.name,
        "family": handle.family.name,
        "target": handle.family.default_target_kind,
        "held_out_seed": seed,
        "scenes": scenes,
        "pointing_scenes": pointing_scenes,
        "tolerance_px": tolerance,
        "attention_eclip_layers": layers,
        "accuracy": accuracy,
        "multi_object_accuracy": rate(present),
        "pointing": {name: rate(values) for name, values in hits.items()},
    }


def format_figures(figures: dict) -> str:
    def cell(entry: dict) -> str:
        return f"{100 * entry['value']:.1f} % [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"

    lines = [
        f"{figures['model']} ({figures['family']}, score: {figures['target']}); held-out seed "
        f"{figures['held_out_seed']}, 95 % bootstrap intervals",
        f"  top-1 accuracy, {figures['scenes']} single-object scenes: {cell(figures['accuracy'])}",
        f"  top-1 is a present object, {figures['pointing_scenes']} scenes of 2-4 objects: "
        f"{cell(figures['multi_object_accuracy'])}",
        f"  pointing game (peak within {figures['tolerance_px']} px of the named object), same scenes:",
    ]
    layers = figures.get("attention_eclip_layers", 1)
    lines += [
        f"    {name + (f' ({layers} layers)' if name == 'attention_eclip' and layers > 1 else ''):<28} {cell(entry)}"
        for name, entry in figures["pointing"].items()
    ]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faithclip.stand_ins", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-clip", help="a shipped name or a directory (default: shapes-clip)")
    parser.add_argument(
        "--scenes", type=positive_int, default=1000, help="single-object scenes for accuracy (default: 1000)"
    )
    parser.add_argument("--pointing-scenes", type=positive_int, default=300, help="multi-object scenes (default: 300)")
    parser.add_argument(
        "--layers",
        type=positive_int,
        default=1,
        help="Attention-ECLIP over the last N layers (default: 1, the published definition)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    from faithclip.errors import FaithclipError
    from faithclip.models.loading import load

    torch.set_num_threads(1)
    try:
        figures = stand_in_figures(load(args.model), args.scenes, args.pointing_scenes, layers=args.layers)
    except (FaithclipError, ValueError) as error:
        print(f"python -m faithclip.stand_ins: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m faithclip.stand_ins: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(figures, indent=1) if args.json else format_figures(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
