"""How often text-side maps come out all zero: ``python benchmarks/text_zero_maps.py [scenes] [method]``.

On the shipped shapes-clip, every prompt of the 30-prompt set is explained against each of ``scenes``
(default 20) multi-object scenes (seed 0) with ``method`` (default attention_eclip), once with each
``lambda_span`` (``context``: the published text code; ``inner``: tokens strictly between start and
end). Prints, per rule, the number of all-zero maps, overall and for the prompts that name an object in
the scene. An all-zero text map means every word's term was removed by the ReLU: no word raised the score
through the explained layer(s) (docs/equivalence.md, "All-zero text maps").
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch
from PIL import Image

import faithclip
from faithclip.shapes.world import ShapesWorld, class_caption


def main() -> None:
    scenes = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    method = sys.argv[2] if len(sys.argv) > 2 else "attention_eclip"
    torch.set_num_threads(1)
    model = faithclip.load("shapes-clip")
    world = ShapesWorld(image_size=model.image_size, seed=0)
    batch = world.multi_object_set(scenes, seed=0)
    prompts = list(world.prompts)
    present = [{class_caption(label) for label in row if label >= 0} for row in batch.labels]
    images = [Image.fromarray(image) for image in batch.images]
    print(f"{method} text maps, shapes-clip, {scenes} multi-object scenes x {len(prompts)} prompts")
    for span in ("context", "inner"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = faithclip.explain_text(model, images, prompts, method=method, lambda_span=span)
        zero = np.array([bool((ex.map == 0).all()) for ex in maps]).reshape(scenes, len(prompts))
        named = np.array([[prompt in present[s] for prompt in prompts] for s in range(scenes)])
        print(
            f"lambda_span={span:8s} all-zero maps: {zero.sum()} of {zero.size}; "
            f"for prompts naming an object in the scene: {(zero & named).sum()} of {named.sum()}"
        )


if __name__ == "__main__":
    main()
