"""Segmentation scores: hand-worked tiny masks, and literal slow forms of IoU, pixel accuracy and AP."""

from __future__ import annotations

import math

import pytest
import torch

from faithclip.metrics import METRICS
from faithclip.metrics.segmentation import average_precision, pooled_scores, segmentation_scores


def _literal_ap(scores: list[float], truth: list[bool]) -> float:
    """AP written out: for each distinct score value, highest first, count predicted and true positives
    of ``score >= value`` one by one; sum (recall step) x precision."""
    positives = sum(truth)
    total, previous_recall = 0.0, 0.0
    for value in sorted(set(scores), reverse=True):
        predicted = [t for s, t in zip(scores, truth) if s >= value]
        hits = sum(1 for t in predicted if t)
        precision, recall = hits / len(predicted), hits / positives
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def _literal_scores(r: list[list[float]], mask: list[list[bool]], t: float, ignore=None):
    """IoU of both classes, mIoU and pixel accuracy by visiting every pixel."""
    inter, union, correct, labelled = [0, 0], [0, 0], 0, 0
    for y, row in enumerate(r):
        for x, value in enumerate(row):
            if ignore is not None and ignore[y][x]:
                continue
            pred, true = int(value > t), int(mask[y][x])
            labelled += 1
            correct += pred == true
            for c in (0, 1):
                inter[c] += pred == c and true == c
                union[c] += pred == c or true == c
    ious = [i / u for i, u in zip(inter, union)]
    return {"miou": sum(ious) / 2, "iou": ious[1], "pixel_accuracy": correct / labelled}


def test_hand_worked_two_by_two():
    # r = [[1, .5], [0, .5]] after min-max; mean threshold 0.5 -> only (0, 0) is predicted object.
    saliency = torch.tensor([[4.0, 2.0], [0.0, 2.0]])
    mask = torch.tensor([[True, True], [False, False]])
    scores, details = segmentation_scores(saliency, mask)
    assert details["threshold"] == 0.5
    # background: predicted {(0,1),(1,0),(1,1)}, true {(1,0),(1,1)}: 2/3; object: 1/2
    assert scores["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-12)
    assert scores["iou"] == pytest.approx(0.5, abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 4, abs=1e-12)
    # object AP by hand: at 1 -> P 1, R 1/2; at .5 -> P 2/3, R 1; at 0 -> no recall gain
    assert scores["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)


def test_ignored_pixels_count_nowhere():
    saliency = torch.tensor([[4.0, 2.0], [0.0, 2.0]])
    mask = torch.tensor([[True, True], [False, False]])
    ignore = torch.tensor([[False, True], [False, False]])  # the missed object pixel is a boundary
    scores, details = segmentation_scores(saliency, mask, ignore)
    assert scores["iou"] == 1.0 and scores["pixel_accuracy"] == 1.0 and scores["miou"] == 1.0
    assert details["labelled"] == [3]


def test_fixed_and_best_thresholds():
    saliency = torch.tensor([[1.0, 0.9, 0.2, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    fixed, _ = segmentation_scores(saliency, mask, threshold=0.95)  # only the first pixel
    assert fixed["iou"] == 0.5
    best, details = segmentation_scores(saliency, mask, threshold="best")
    assert best["miou"] == 1.0 and 0.2 <= details["threshold"] < 0.9
    with pytest.raises(ValueError):
        segmentation_scores(saliency, mask, threshold=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_against_literal_forms_on_random_maps(seed):
    generator = torch.Generator().manual_seed(seed)
    saliency = torch.rand(7, 9, generator=generator)
    saliency[0, :3] = saliency[1, 4]  # ties
    mask = torch.rand(7, 9, generator=generator) > 0.6
    ignore = torch.rand(7, 9, generator=generator) > 0.85
    for threshold in ("mean", 0.3):
        scores, details = segmentation_scores(saliency, mask, ignore, threshold)
        r = ((saliency - saliency.min()) / (saliency.max() - saliency.min())).double()
        t = float(r.mean()) if threshold == "mean" else threshold
        expected = _literal_scores(r.tolist(), mask.tolist(), t, ignore.tolist())
        for key, value in expected.items():
            assert scores[key] == pytest.approx(value, abs=1e-12), key
    keep = ~ignore
    r_kept, m_kept = r[keep].tolist(), mask[keep].tolist()
    assert scores["ap"] == pytest.approx(_literal_ap(r_kept, m_kept), abs=1e-12)
    pooled = _literal_ap([1 - v for v in r_kept] + r_kept, [not m for m in m_kept] + m_kept)
    assert scores["ap_pooled"] == pytest.approx(pooled, abs=1e-12)


def test_average_precision_of_a_perfect_and_of_a_reversed_ranking():
    truth = torch.tensor([True, True, False, False])
    assert average_precision(torch.tensor([4.0, 3.0, 2.0, 1.0]), truth) == 1.0
    # reversed: positives at ranks 3 and 4 -> (1/2)(1/3) + (1/2)(2/4)
    assert average_precision(torch.tensor([1.0, 2.0, 3.0, 4.0]), truth) == pytest.approx(1 / 6 + 1 / 4, abs=1e-12)
    assert math.isnan(average_precision(torch.tensor([1.0, 2.0]), torch.tensor([False, False])))


def test_pooled_scores_sum_counts_before_dividing():
    records = [
        {
            "method": "m",
            "label": 0,
            "details": {"segmentation": {"inter": [1, 1], "union": [2, 4], "correct": [2], "labelled": [4]}},
        },
        {
            "method": "m",
            "label": 1,
            "details": {"segmentation": {"inter": [3, 0], "union": [3, 1], "correct": [3], "labelled": [4]}},
        },
    ]
    table = pooled_scores(records, class_names=["a", "b"])
    assert table["m"]["overall"]["miou"] == pytest.approx((4 / 5 + 1 / 5) / 2, abs=1e-12)
    assert table["m"]["overall"]["pixel_accuracy"] == pytest.approx(5 / 8, abs=1e-12)
    assert table["m"]["b"]["iou"] == 0.0 and table["m"]["a"]["images"] == 1


def test_registered_with_its_protocol():
    spec = METRICS.get("segmentation")
    assert spec.needs_mask and spec.protocol_label() == "segmentation, threshold mean"
    assert spec.protocol_label({"threshold": 0.5}) == "segmentation, threshold 0.5"
