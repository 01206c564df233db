"""The one implementation of each map-value function (``faithclip.mapmath``): min-max by hand-worked values,
average ranks and Spearman against scipy (an independent implementation) on data with many ties."""

from __future__ import annotations

import math

import pytest
import torch

from faithclip.mapmath import average_ranks, minmax, spearman

# ranks are exact (sums of small integers, halved); Spearman's rho differs from scipy's in the order of the
# float64 operations only: a few ulps of a number in [-1, 1]
SPEARMAN_ATOL = 1e-12


def test_minmax_by_hand_over_the_whole_tensor_and_over_axes():
    values = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    assert torch.equal(minmax(values), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    # per row (the published lambda's axis): [1, 3] -> [0, 1]; [2, 5] -> [0, 1]
    assert torch.equal(minmax(values, dim=-1), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    # per (gh, gw) map of a (B, K, gh, gw) batch (LeGrad): the second map is constant -> zeros
    maps = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[7.0, 7.0], [7.0, 7.0]]]])
    assert torch.equal(
        minmax(maps, dim=(-2, -1)), torch.tensor([[[[0.0, 0.5], [0.25, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    )


def test_minmax_constant_slices_take_the_given_value_and_keep_the_dtype():
    rows = torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 4.0]], dtype=torch.float32)
    out = minmax(rows, dim=-1, constant=1.0)  # the published Grad-ECLIP lambda: a constant row is no reweighting
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.25, 1.0]]))
    assert torch.equal(minmax(torch.full((2, 2), 3.0, dtype=torch.float64)), torch.zeros(2, 2, dtype=torch.float64))


def test_average_ranks_and_spearman_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (7, 6), generator=generator).double()  # 42 values, 5 levels: many ties
    b = torch.randn(7, 6, generator=generator, dtype=torch.float64)
    tied_b = torch.randint(0, 3, (7, 6), generator=generator).double()  # ties on both sides
    assert torch.equal(average_ranks(a), torch.from_numpy(stats.rankdata(a.reshape(-1).numpy())))
    for x, y in ((a, b), (a, tied_b), (b, a + 0.5 * b)):
        expected = stats.spearmanr(x.reshape(-1).numpy(), y.reshape(-1).numpy()).statistic
        assert abs(spearman(x, y) - expected) <= SPEARMAN_ATOL


def test_spearman_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a**3) == 1.0 and spearman(a, -a) == -1.0
    # ranks (1, 2, 3, 4) and (2, 1, 4, 3): centred (-1.5, -.5, .5, 1.5) and (-.5, -1.5, 1.5, .5): 3 / 5
    assert spearman(a, torch.tensor([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.6, abs=SPEARMAN_ATOL)
    assert math.isnan(spearman(torch.ones(3, 3), torch.randn(3, 3)))  # a constant map has no ranking


def test_explanation_normalized_is_minmax_in_float64_and_refuses_non_finite_maps():
    from faithclip.explanation import Explanation

    explanation = Explanation(map=torch.tensor([[1.0, 3.0], [2.0, 5.0]]), score=0.0, method="m", side="image")
    assert torch.equal(explanation.normalized(), torch.tensor([[0.0, 0.5], [0.25, 1.0]], dtype=torch.float64))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="NaN or infinite"):
            Explanation(map=torch.tensor([0.0, bad]), score=0.0, method="m", side="image").normalized()
