"""Segmentation scores of a map against the object mask: IoU / mIoU, pixel accuracy, average precision.

Protocol of Chefer et al., "Transformer Interpretability Beyond Attention Visualization", CVPR 2021
(its ImageNet-Segmentation evaluation, ``imagenet_seg_eval.py`` of github.com/hila-chefer/Transformer-Explainability),
which the CLIP-explainability papers that report segmentation scores follow. The map is upsampled to the
scored image (bilinear, ``align_corners=False``) and min-max normalised over the crop, ``r in [0, 1]``;
pixels are two classes, object (1) and background (0); pixels marked ``ignore`` (VOC's 255) are left out
of every count.

Thresholds (option ``threshold``), predicted object ``= r > t``:

- ``"mean"`` (default; Chefer et al. 2021): ``t = mean_p r(p)`` over the crop's pixels, per image;
- a number ``t`` in [0, 1]: a fixed threshold on the normalised map (faithclip option, e.g. 0.5);
- ``"best"``: per image, the ``t`` in ``{0.05, 0.10, ..., 0.95}`` with the highest mIoU (faithclip option: an
  oracle upper bound that reads the mask to choose, named so it is never mistaken for the others).

Per image, with ``I_c`` / ``U_c`` the intersection / union of predicted and true class ``c``:

    IoU_c = I_c / U_c,    mIoU = (IoU_0 + IoU_1) / 2,    pixel accuracy = #correct / #labelled

Average precision of the ranked (unthresholded) map, ties grouped (the step-wise sum of scikit-learn's
``average_precision_score``), over distinct score values ``s_1 > s_2 > ...``:

    AP = sum_k (R_k - R_{k-1}) P_k,   P_k, R_k: precision and recall of ``score >= s_k``

``ap``: the object class scored by ``r``. ``ap_pooled``: Chefer et al.'s figure, ONE AP over the 2P entries
of both class channels (object scored ``r`` against the object mask, background scored ``1 - r`` against
the background mask). Chefer et al. sum intersections, unions and pixel counts over the whole data set
before dividing; here every figure is per image and the run reports the mean over images with a bootstrap
interval (like every other metric); ``pooled_scores`` gives the data-set-pooled mIoU and pixel accuracy,
overall and per class, from a run's records.
"""

from __future__ import annotations

from typing import Any

import torch

from faithclip.mapmath import minmax
from faithclip.metrics import MetricSpec, register_metric
from faithclip.metrics.case import MetricCase, MetricValue, pixel_map

CHEFER_PAPER = (
    "Chefer et al., Transformer Interpretability Beyond Attention Visualization, CVPR 2021 "
    "(ImageNet-Segmentation protocol)"
)
BEST_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


# ---- pure tensor core ---------------------------------------------------------------------------
def confusion(predicted: torch.Tensor, mask: torch.Tensor, ignore: torch.Tensor | None = None) -> dict[str, list[int]]:
    """Intersections and unions of the two classes (background, object) and the correct / labelled
    pixel counts. ``(H, W)`` bool each; ``ignore`` pixels are left out."""
    keep = torch.ones_like(mask) if ignore is None else ~ignore
    inter, union = [], []
    for cls_pred, cls_true in ((~predicted, ~mask), (predicted, mask)):
        inter.append(int((cls_pred & cls_true & keep).sum()))
        union.append(int(((cls_pred | cls_true) & keep).sum()))
    correct = int(((predicted == mask) & keep).sum())
    return {"inter": inter, "union": union, "correct": [correct], "labelled": [int(keep.sum())]}


def scores_from_counts(counts: dict[str, list[int]]) -> dict[str, float]:
    """mIoU, object IoU and pixel accuracy from ``confusion`` counts (NaN for 0 / 0)."""
    ious = [i / u if u else float("nan") for i, u in zip(counts["inter"], counts["union"])]
    finite = [v for v in ious if v == v]
    labelled = counts["labelled"][0]
    return {
        "miou": sum(finite) / len(finite) if finite else float("nan"),
        "iou": ious[1],
        "pixel_accuracy": counts["correct"][0] / labelled if labelled else float("nan"),
    }


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """``sum_k (R_k - R_{k-1}) P_k`` over distinct score values, highest first (NaN without positives).
    ``scores`` ``(N,)``, ``truth`` ``(N,)`` bool."""
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True)
    sorted_scores, sorted_truth = order.values, truth[order.indices].to(torch.float64)
    true_pos = torch.cumsum(sorted_truth, 0)  # (N,)
    last_of_value = torch.ones_like(sorted_truth, dtype=torch.bool)
    last_of_value[:-1] = sorted_scores[1:] != sorted_scores[:-1]  # the last position of each distinct value
    tp = true_pos[last_of_value]  # (K,)
    counted = torch.arange(1, scores.numel() + 1, dtype=torch.float64)[last_of_value]  # (K,) predicted positives
    precision, recall = tp / counted, tp / positives
    previous = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def segmentation_scores(
    saliency: torch.Tensor, mask: torch.Tensor, ignore: torch.Tensor | None = None, threshold: str | float = "mean"
) -> tuple[dict[str, float], dict[str, Any]]:
    """The scores of one ``(H, W)`` map against its ``(H, W)`` bool mask, and the details (threshold used,
    counts for pooling)."""
    r = minmax(saliency.to(torch.float64))  # (H, W) in [0, 1]; a constant map gives zeros
    if threshold == "mean":
        candidates = [float(r.mean())]
    elif threshold == "best":
        candidates = list(BEST_THRESHOLDS)
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1:
        candidates = [float(threshold)]
    else:
        raise ValueError(f"threshold must be 'mean', 'best' or a number in [0, 1], got {threshold!r}")
    best: tuple[float, dict[str, float], dict[str, list[int]], float] | None = None
    for t in candidates:
        counts = confusion(r > t, mask, ignore)
        scores = scores_from_counts(counts)
        key = scores["miou"] if scores["miou"] == scores["miou"] else -1.0
        if best is None or key > best[0]:
            best = (key, scores, counts, t)
    _, scores, counts, chosen = best
    keep = torch.ones_like(mask) if ignore is None else ~ignore
    flat_r, flat_mask = r[keep], mask[keep]  # (N,)
    scores["ap"] = average_precision(flat_r, flat_mask)
    scores["ap_pooled"] = average_precision(torch.cat([1 - flat_r, flat_r]), torch.cat([~flat_mask, flat_mask]))
    return scores, {"threshold": chosen, **counts}


def pooled_scores(
    records: list[dict[str, Any]], metric: str = "segmentation", class_names: list[str] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Chefer et al.'s data-set-pooled figures from a run's ``per_image`` records: intersections, unions
    and pixel counts summed over the images before dividing, per method, overall and per class (label)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for record in records:
        counts = (record.get("details") or {}).get(metric)
        if not counts:
            continue
        label = class_names[record["label"]] if class_names else str(record["label"])
        for group in ("overall", label):
            sums = table.setdefault(record["method"], {}).setdefault(group, {})
            for key in ("inter", "union", "correct", "labelled"):
                sums[key] = [a + b for a, b in zip(sums.get(key, [0] * len(counts[key])), counts[key])]
            sums["images"] = sums.get("images", 0) + 1
    return {
        method: {group: {**scores_from_counts(sums), "images": sums["images"]} for group, sums in groups.items()}
        for method, groups in table.items()
    }


# ---- runner -------------------------------------------------------------------------------------
def run_segmentation(case: MetricCase, threshold: str | float = "mean") -> MetricValue:
    if case.mask is None:
        raise ValueError("segmentation scores need an object mask; use a data set with masks (voc:, shapes)")
    saliency = pixel_map(case.patch_map, case.size)  # (H, W)
    values, details = segmentation_scores(saliency, case.mask, case.ignore, threshold)
    return MetricValue(values=values, details=details)


register_metric(
    MetricSpec(
        name="segmentation",
        category="localisation",
        higher_is_better=True,
        protocol="segmentation, threshold {threshold}",
        summary="mIoU, object IoU and pixel accuracy of the thresholded map, AP of the ranked map, against the object mask",
        paper=CHEFER_PAPER,
        run=run_segmentation,
        outputs={
            "miou": "mIoU",
            "iou": "object IoU",
            "pixel_accuracy": "pixel accuracy",
            "ap": "object AP",
            "ap_pooled": "mAP (both classes pooled)",
        },
        needs_mask=True,
        defaults={"threshold": "mean"},
    )
)
