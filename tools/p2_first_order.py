"""Does the score's local slope follow the model's reliance? P2's primary test on integrated-gradients maps:

    python tools/p2_first_order.py [--model shapes-clip] [--scene-seeds 3] [--ladder-seeds 6] [--scenes 128]
                                   [--steps 1,32]

P2's primary pair (docs/p2.md) sets each map's share of the named object against the model's ``reliance``: the
share of the model's object-erasure map, a FINITE intervention (each object replaced by the scene's
background). A gradient map reads the score's LOCAL slope instead. This tool puts a map between the two through
the same test, on the cells of the audit's design given (one P2 run per scene seed x first ladder seed, as
``python -m faithclip.audit.p2_replicate`` runs them; default the single cell 3, 6): integrated gradients
(Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017) from the scene's background
``b`` to the scene ``x``, with the paper's right Riemann sum of ``m`` steps, summed over colour channels:

    map(u) = sum_c (x - b)_{c,u} * (1/m) sum_{k=1..m} dS/dx_{c,u} (b + k/m (x - b))      (H, W), pixel resolution

``m = 1`` is the gradient at the scene times (scene - background): the local slope alone. As ``m`` grows the
map's total tends to ``S(x) - S(b)`` (completeness), and its mass on an object moves from the local slope toward
the path from background to scene. If the ``m = 1`` map tracks ``reliance`` where the gradient methods do not,
the slope at the scene already carries what the erasure measures; if it does not and ``m = 32`` does, the
model is too far from linear between background and scene for any map of the local slope to follow the
erasure. Not a registered method: its baseline is the scene's background, which only P2's harness knows
(``faithclip.audit.p2.scene_options``). Holm runs over the listed step counts, as over the methods of a run.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from faithclip.methods.context import Context, MapResult
from faithclip.registry import MethodSpec


def integrated_gradients_image(ctx: Context, baseline: Any = None, steps: int = 32) -> MapResult:
    """The formula of the module docstring, ``(B, K, H, W)``: one backward pass per step and text."""
    from faithclip.errors import MethodError
    from faithclip.methods.occlusion import baseline_pixels

    m = int(steps)
    if baseline is None or m < 1:
        raise MethodError(f"integrated gradients needs a baseline and steps >= 1; got {baseline!r}, {steps!r}.")
    start = baseline_pixels(ctx, baseline)  # (B, 3, H, W)
    delta = ctx.pixels - start
    text = ctx.fixed_text_embeds()
    maps = torch.zeros(ctx.num_images, ctx.num_texts, *ctx.pixels.shape[-2:], dtype=ctx.pixels.dtype)
    for k in range(1, m + 1):
        point = (start + k / m * delta).detach().requires_grad_(True)  # (B, 3, H, W)
        scores = ctx.score(ctx.image_features(point), text)  # (B, K)
        for j in range(ctx.num_texts):
            (slope,) = torch.autograd.grad(scores[:, j].sum(), point, retain_graph=j + 1 < ctx.num_texts)
            maps[:, j] += (slope * delta).sum(1).detach() / m  # each image's score reads only its pixels
    return MapResult(
        maps=maps, scores=ctx.model_scores(), input_size=tuple(ctx.pixels.shape[-2:]), options={"steps": steps}
    )


def first_order_spec(steps: int) -> MethodSpec:
    """The map as a method P2's harness can run (not registered), named by its step count."""
    return MethodSpec(
        name=f"integrated_gradients_{steps}",
        paper="Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017",
        image=integrated_gradients_image,
        modifies_input=True,
        families=("*",),
        assumes_pooled_score=None,
        defaults={"baseline": None, "steps": steps},
    )


def seeds(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ValueError(f"{what} must be comma-separated whole numbers >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from faithclip.audit.p2 import P2Design, p2_test
    from faithclip.errors import FaithclipError
    from faithclip.models.loading import load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-clip")
    parser.add_argument("--scene-seeds", default="3", help="comma-separated scene seeds")
    parser.add_argument("--ladder-seeds", default="6", help="comma-separated first ladder seeds")
    parser.add_argument("--scenes", type=int, default=128)
    parser.add_argument("--steps", default="1,32", help="comma-separated step counts m >= 1")
    args = parser.parse_args(argv)
    try:
        steps = list(dict.fromkeys(seeds(args.steps, "--steps")))  # each step count once
        if min(steps) < 1:
            raise ValueError(f"--steps must be whole numbers >= 1, got {args.steps!r}")
        cells = [
            (s, l) for s in seeds(args.scene_seeds, "--scene-seeds") for l in seeds(args.ladder_seeds, "--ladder-seeds")
        ]
    except ValueError as error:
        print(f"p2_first_order: error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        handle = load(args.model)
    except FaithclipError as error:
        print(f"p2_first_order: error: {error}", file=sys.stderr)
        return 2
    specs = [first_order_spec(m) for m in steps]
    options = {spec.name: {"baseline": "background", "steps": m} for spec, m in zip(specs, steps)}
    verdicts: dict[int, list[str]] = {m: [] for m in steps}
    for number, (scene_seed, ladder_seed) in enumerate(cells):
        design = P2Design(scenes=args.scenes, scene_seed=scene_seed, ladder_seed=ladder_seed)
        primary = p2_test(handle, specs, design, options)["primary"]
        if number == 0:
            print(
                f"P2's primary test (x = {primary['x']}, y = {primary['y']}) on integrated-gradients maps from the "
                f"scene's background, {handle.name}: {design.scenes} scenes x {design.ladders} ladders x "
                f"{design.rungs} rungs a cell (Holm over the {len(steps)} step counts of a cell)"
            )
            print("| scene seed, ladder seed | steps m | r [95 %] | verdict | scenes (undefined) |")
            print("|---|---|---|---|---|")
        for spec, m in zip(specs, steps):
            entry = primary["methods"][spec.name]
            verdicts[m].append(entry["verdict"])
            print(
                f"| {scene_seed}, {ladder_seed} | {m} | {entry['r']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}] | "
                f"{entry['verdict']} | {entry['scenes']} ({entry['undefined']}) |"
            )
    if len(cells) > 1:
        for m in steps:
            counts = ", ".join(f"{v} {verdicts[m].count(v)}" for v in ("tracks", "inconclusive", "does not track"))
            print(f"m = {m}: {counts} of {len(cells)} cells")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("p2_first_order: interrupted", file=sys.stderr)
        sys.exit(130)
