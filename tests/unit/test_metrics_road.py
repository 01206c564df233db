"""ROAD: the imputation against the literal sparse system, fixtures known by construction, the runner."""

from __future__ import annotations

import pytest
import torch
from test_evaluate import tiny_shapes_clip

from faithclip.data.folders import shapes_set
from faithclip.evaluation import EvalConfig, Evaluator
from faithclip.metrics import METRICS
from faithclip.metrics.road import linear_imputation, noisy_linear_imputation, removed_pixels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed,fraction", [(0, 0.1), (1, 0.5), (2, 0.9)])
def test_imputation_solves_the_papers_system(seed, fraction):
    scipy = pytest.importorskip("scipy", reason="the literal oracle solves with scipy.sparse (test extra)")
    del scipy
    from reference.road_reference import literal_imputation

    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(3, 9, 11, generator=generator, dtype=torch.float64)
    removed = torch.rand(9, 11, generator=generator) < fraction  # holes touching the border included
    removed[0, 0] = True
    expected = torch.from_numpy(literal_imputation(image.numpy(), removed.numpy()))
    # CG to a relative residual of 1e-8 on a well-conditioned 99-unknown system vs an exact LU solve
    torch.testing.assert_close(linear_imputation(image, removed), expected, rtol=0, atol=1e-6)


def test_a_plane_is_filled_exactly_inside_the_image():
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    plane = (2.0 * xs - 0.5 * ys + 3.0).double()[None]  # (1, H, W): each pixel is its neighbours' weighted mean
    removed = torch.zeros(12, 10, dtype=torch.bool)
    removed[3:9, 2:7] = True  # an interior hole: every removed pixel has all 8 neighbours
    filled = linear_imputation(torch.where(removed, torch.zeros_like(plane), plane), removed)
    torch.testing.assert_close(filled, plane, rtol=0, atol=1e-7)  # CG tolerance on an exact solution


def test_noise_touches_only_removed_pixels_with_the_stated_scale():
    image = torch.zeros(3, 40, 40, dtype=torch.float64)
    removed = torch.zeros(40, 40, dtype=torch.bool)
    removed[5:35, 5:35] = True
    noisy = noisy_linear_imputation(image, removed, 0.01, torch.Generator().manual_seed(0))
    assert bool((noisy[:, ~removed] == 0).all())  # known pixels are copied
    std = float(noisy[:, removed].std())
    assert 0.0095 < std < 0.0105  # 2,700 draws: the sample sd is within 5 % of 0.01 with overwhelming probability


def test_morf_and_lerf_remove_the_stated_pixels():
    rank = torch.tensor([3, 0, 5, 1, 4, 2])  # pixel 1 is the most relevant
    morf = removed_pixels(rank, 0.5, "morf", (2, 3)).flatten()
    lerf = removed_pixels(rank, 0.5, "lerf", (2, 3)).flatten()
    assert morf.tolist() == [False, True, False, True, False, True]  # ranks 0, 1, 2
    assert lerf.tolist() == [True, False, True, False, True, False]


def test_road_metrics_run_in_evaluate_and_repeat_exactly(tmp_path):
    handle = tiny_shapes_clip()
    data = shapes_set(32, count=2)
    config = EvalConfig(
        model="tiny", data=data.name, methods=["attention_eclip"], metrics=["road_morf", "road_lerf"], batch_size=8
    )
    first = Evaluator(handle, config).run(data, tmp_path / "a", progress=False, report=False)
    second = Evaluator(handle, config).run(data, tmp_path / "b", progress=False, report=False)
    values = [r["values"] for r in first["per_image"]]
    assert values == [r["values"] for r in second["per_image"]]  # same seed, same call: deterministic rerun
    for record in values:
        for name in ("road_morf", "road_lerf"):
            assert 0 <= record[name]["prob"] <= 1 and record[name]["top1"] in [i / 9 for i in range(10)]
    assert first["per_image"][0]["curves"]["road_morf"]["prob"][0] == [round(0.1 * i, 1) for i in range(1, 10)]
    assert METRICS.get("road_morf").protocol_label() == "road, noise 0.01"
