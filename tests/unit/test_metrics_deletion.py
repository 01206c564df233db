"""Deletion / insertion under the Grad-ECLIP and RISE protocols.

Oracles: slow forms of both protocols written from their descriptions (tests/reference/deletion_reference.py),
scipy's Gaussian filter (RISE's ``gkern``), and a model whose score is a known linear function of the
pixels, for which the perfect order gives a closed-form curve.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_clip, token_ids
from faithclip.methods.context import Context
from faithclip.metrics import METRICS
from faithclip.metrics.case import MetricCase
from faithclip.metrics.deletion import (
    curve,
    gradeclip_counts,
    gradeclip_curves,
    random_colours,
    rise_blur,
    rise_counts,
    rise_curve,
    rise_gaussian_kernel,
    salience_order,
    trapezoid_auc,
)
from faithclip.models.loading import from_hf
from faithclip.targets import Target
from reference import deletion_reference as ref

pytestmark = pytest.mark.usefixtures("one_thread")


def _distinct_map(size: int, seed: int) -> torch.Tensor:
    """A full-resolution map with all-distinct values (no ties, so every sort agrees)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size * size, generator=generator).reshape(size, size).double() + 1


# ---- closed-form curves on a linear model ---------------------------------------------------------
def test_perfect_order_on_a_linear_model_gives_the_closed_form_rise_curves():
    size, step = 8, 4
    weights = _distinct_map(size, 0)  # w_p in {1..P}, the map IS the weight: the perfect order
    num_pixels = size * size
    image = torch.ones(3, size, size, dtype=torch.float64)

    def score(batch):  # s(x) = sum_p w_p * mean_c x_cp
        return (batch.mean(1) * weights).sum((-1, -2))

    order = salience_order(weights, (size, size))
    counts = rise_counts(num_pixels, step)
    deletion = curve(image, torch.zeros_like(image), order, counts, score, batch_size=5)
    insertion = curve(torch.zeros_like(image), image, order, counts, score, batch_size=5)
    # deleting the m largest of 1..P leaves 1 + ... + (P - m); inserting them gives (P - m + 1) + ... + P
    expected_deletion = torch.tensor([(num_pixels - m) * (num_pixels - m + 1) / 2 for m in counts], dtype=torch.float64)
    expected_insertion = torch.tensor([m * (2 * num_pixels - m + 1) / 2 for m in counts], dtype=torch.float64)
    assert torch.equal(deletion, expected_deletion)
    assert torch.equal(insertion, expected_insertion)
    x = [m / num_pixels for m in counts]
    # RISE's own auc() on equally spaced points is the trapezoid rule on x in [0, 1]
    assert trapezoid_auc(x, deletion.tolist()) == pytest.approx(ref.equal_spacing_auc(deletion.numpy()), rel=1e-12)
    # and a worse (reversed) order deletes less score early: larger deletion AUC
    reverse = curve(image, torch.zeros_like(image), salience_order(-weights, (size, size)), counts, score)
    assert trapezoid_auc(x, reverse.tolist()) > trapezoid_auc(x, deletion.tolist())


def test_perfect_order_on_a_linear_model_gives_the_closed_form_gradeclip_insertion():
    size = 16  # 256 pixels: n = max(1, int(256 * 0.5 / 100)) = 1 pixel per step
    weights = _distinct_map(size, 1)
    image = torch.full((3, size, size), 255.0, dtype=torch.float64)
    counts = gradeclip_counts(size * size)
    assert counts == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    values = curve(
        torch.zeros_like(image),
        image,
        salience_order(weights, (size, size)),
        counts,
        lambda b: (b.mean(1) / 255 * weights).sum((-1, -2)),
    )
    total = size * size
    assert values.tolist() == [m * (2 * total - m + 1) / 2 for m in counts]


def test_gradeclip_counts_on_a_224_crop():
    counts = gradeclip_counts(224 * 224)
    assert counts[0] == 2500 and counts[-1] == 25000 and len(counts) == 10  # n = int(50176 / 200) = 250


# ---- the official protocols, as described -----------------------------------------------------------
def test_gradeclip_deletion_and_insertion_images_match_the_official_scripts():
    size = 20
    heatmap = _distinct_map(size, 2)
    rgb = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    official_deleted = ref.gradeclip_deletion_images(
        rgb.numpy(), heatmap.numpy(), 100, 10, torch.Generator().manual_seed(7)
    )
    official_inserted = ref.gradeclip_insertion_images(rgb.numpy(), heatmap.numpy(), 100, 10)
    assert len(official_deleted) == len(official_inserted) == 10

    image = rgb.permute(2, 0, 1).double()  # (3, H, W)
    order = salience_order(heatmap, (size, size))
    counts = gradeclip_counts(size * size)
    fill = random_colours(order, (3, size, size), torch.Generator().manual_seed(7)).double()
    deleted = curve(image, fill, order, counts, lambda b: b)
    inserted = curve(torch.zeros_like(image), image, order, counts, lambda b: b)
    assert len(deleted) == len(inserted) == 10
    for mine, theirs in zip(deleted, official_deleted):
        assert np.array_equal(mine.permute(1, 2, 0).numpy().astype(np.uint8), theirs)
    for mine, theirs in zip(inserted, official_inserted):
        assert np.array_equal(mine.permute(1, 2, 0).numpy().astype(np.uint8), theirs)


@pytest.mark.parametrize("klen,sigma", [(11, 5.0), (5, 1.0), (31, 3.0), (4, 2.0)])
def test_rise_gaussian_kernel_is_scipys(klen, sigma):
    ours = rise_gaussian_kernel(klen, sigma)
    theirs = ref.rise_kernel(klen, sigma)[0, 0].double()
    assert torch.allclose(ours, theirs, atol=1e-7, rtol=0)
    assert ours.sum() == pytest.approx(1.0, abs=1e-12)  # reflection folds every tail back: mass is kept


def test_rise_curves_match_the_official_causal_metric():
    size, step, classes = 12, 8, 3
    generator = torch.Generator().manual_seed(4)
    projection = torch.randn(classes, 3 * size * size, generator=generator, dtype=torch.float64) / 10
    image = torch.randn(1, 3, size, size, generator=generator, dtype=torch.float64)
    explanation = _distinct_map(size, 5)

    def model(batch):  # class probabilities of a fixed linear classifier
        return (batch.reshape(batch.shape[0], -1) @ projection.T).softmax(-1)

    kernel = ref.rise_kernel(11, 5).double()
    blur = lambda x: F.conv2d(x, kernel, padding=11 // 2)  # noqa: E731  (RISE's notebook)
    for mode, substrate, start_finish, tolerance in [
        ("del", torch.zeros_like, (image[0], torch.zeros_like(image[0])), 1e-12),
        ("ins", blur, (rise_blur(image[0]), image[0]), 1e-6),  # RISE's kernel is stored in float32
    ]:
        official = ref.rise_curve(model, mode, step, substrate, image.clone(), explanation.numpy(), label=1)
        counts = rise_counts(size * size, step)
        ours = curve(*start_finish, salience_order(explanation, (size, size)), counts, lambda b: model(b)[:, 1])
        assert np.allclose(ours.numpy(), official, atol=tolerance, rtol=0)
        if (size * size) % step == 0:
            x = [m / (size * size) for m in counts]
            assert trapezoid_auc(x, ours.tolist()) == pytest.approx(ref.equal_spacing_auc(official), abs=tolerance)


# ---- the model-calling part on a tiny CLIP ---------------------------------------------------------
@pytest.fixture(scope="module")
def case():
    handle = from_hf(random_clip(seed=3, image_size=32, patch_size=8))
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 32, 32), generator=generator).float()
    from faithclip.metrics.case import normalize_rgb

    pixels = normalize_rgb(rgb, handle.preprocess.mean, handle.preprocess.std)[None]
    ctx = Context(
        handle=handle, side="image", pixels=pixels, text=handle.tokens(token_ids([2, 3, 4, 1])), target=Target("cosine")
    )
    return MetricCase(score_ctx=ctx, rgb=rgb, patch_map=torch.randn(4, 4, generator=generator), label=2, seed=11)


def test_gradeclip_runner_points_and_reproducibility(case):
    deletion = gradeclip_curves(case, "deletion", batch_size=4)
    insertion = gradeclip_curves(case, "insertion", batch_size=32)
    x_del, top1 = deletion.curves["top1"]
    x_ins, _ = insertion.curves["top1"]
    n = int(32 * 32 * 0.5 / 100)
    assert len(x_del) == len(x_ins) == 11
    assert x_del == [0.0] + [10 * k * n / 1024 for k in range(1, 11)]
    assert x_ins == [10 * k * n / 1024 for k in range(1, 11)] + [1.0]  # the official insertion ends on the original
    # the unperturbed points are the model's own prediction
    own = case.score_ctx.model_scores()[0]
    assert top1[0] == float(own.argmax() == case.label)
    assert deletion.curves["prob"][1][0] == pytest.approx(insertion.curves["prob"][1][-1], abs=1e-12)
    assert deletion.values["auc"] == pytest.approx((sum(top1) - top1[0] / 2 - top1[-1] / 2) / 10, abs=1e-15)
    probability = insertion.curves["prob"][1]
    assert insertion.values["prob_auc"] == pytest.approx(ref.equal_spacing_auc(np.array(probability)), abs=1e-15)
    rebatched = gradeclip_curves(case, "deletion", batch_size=32).curves  # batching and seed
    assert rebatched["top1"] == deletion.curves["top1"] and rebatched["prob"][0] == deletion.curves["prob"][0]
    # probabilities move by float rounding only (BLAS blocks other batch sizes differently)
    assert np.allclose(rebatched["prob"][1], deletion.curves["prob"][1], rtol=1e-5, atol=0)
    case.seed += 1
    assert gradeclip_curves(case, "deletion").curves["prob"] != deletion.curves["prob"]  # other colours
    case.seed -= 1


def test_rise_runner_steps_and_auc(case):
    value = rise_curve(case, "deletion", batch_size=7)
    x, y = value.curves["prob"]
    assert value.details == {"step": 64, "num_steps": 16}  # one 8x8 patch area per step on 32x32
    assert x[0] == 0 and x[-1] == 1 and len(x) == 17
    assert value.values["auc"] == pytest.approx(np.trapezoid(y, x), abs=1e-12)
    black = rise_curve(case, "deletion", substrate="black")
    assert black.curves["prob"][1][0] == y[0] and black.curves["prob"][1][-1] != y[-1]
    with pytest.raises(ValueError, match="substrate"):
        rise_curve(case, "deletion", substrate="grey")


def test_registry_metadata():
    for name, better in [
        ("deletion_gradeclip", False),
        ("insertion_gradeclip", True),
        ("deletion_rise", False),
        ("insertion_rise", True),
    ]:
        spec = METRICS.get(name)
        assert spec.higher_is_better is better and spec.category == "faithfulness"
        assert all(f"[{spec.protocol}]" in spec.column(o) for o in spec.outputs)
    assert METRICS.get("deletion_rise").column("auc") == "deletion AUC [rise]"
