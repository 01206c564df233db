"""The tolerance policy (faithclip.numerics, docs/testing.md): values worked out by hand, the documented
table read back from the docs, and the P1 rule built on it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from faithclip.audit.principles import explains_own_scores
from faithclip.numerics import ROUNDING_RTOL, relative_difference, rounding_rtol, same_to_rounding

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_relative_difference_by_hand():
    # |2.00002 - 2| / max(2.00002, 2, 1) = 2e-5 / 2.00002
    assert relative_difference([1.0, 2.0], [1.0, 2.00002]) == pytest.approx(2e-5 / 2.00002, rel=1e-9)
    # a score near zero is judged against its unit (1), not against itself: 1e-7 / 1
    assert relative_difference(1e-6, 1.1e-6) == pytest.approx(1e-7, rel=1e-6)
    # a map (scale 0) is judged against its own peak: 0.01 / 0.5
    assert relative_difference(torch.tensor([0.5, 0.0]), torch.tensor([0.49, 0.0]), 0.0) == pytest.approx(0.02)
    assert relative_difference(torch.zeros(3), torch.zeros(3), 0.0) == 0.0
    assert relative_difference([], []) == 0.0


def test_non_finite_values():
    assert relative_difference([math.nan], [math.nan]) == math.inf  # NaN never equals anything
    assert relative_difference([math.inf, 1.0], [math.inf, 1.0]) == 0.0  # the same infinity at the same place
    assert relative_difference([math.inf], [-math.inf]) == math.inf
    assert relative_difference([math.inf], [1.0]) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        relative_difference(torch.zeros(2), torch.zeros(3))


def test_bounds_by_dtype_and_kind():
    assert rounding_rtol(torch.float32) == rounding_rtol("float32", "value") == ROUNDING_RTOL["value"]["float32"]
    assert rounding_rtol(torch.bfloat16, "map") == ROUNDING_RTOL["map"]["bfloat16"]
    for kind in ROUNDING_RTOL:  # never below 8 rounding units of the dtype
        for dtype, unit in (("float64", 2.0**-53), ("float32", 2.0**-24), ("bfloat16", 2.0**-8), ("float16", 2.0**-11)):
            assert rounding_rtol(dtype, kind) >= 8 * unit
    with pytest.raises(ValueError, match="no rounding tolerance"):
        rounding_rtol(torch.int64)
    with pytest.raises(ValueError, match="kind must be"):
        rounding_rtol(torch.float32, "score")
    assert same_to_rounding(1.0, 1.0 + 5e-6, torch.float32) and not same_to_rounding(1.0, 1.0 + 2e-5, torch.float32)
    assert same_to_rounding(torch.tensor([1.0, 0.0]), torch.tensor([1.0 + 5e-5, 0.0]), "float32", "map")


def test_documented_table_is_the_code():
    """docs/testing.md states each bound; the table there must be the one the code uses."""
    if not DOCS.is_file():
        pytest.skip("docs/testing.md is not in this checkout")
    text = DOCS.read_text()
    for kind, bounds in ROUNDING_RTOL.items():
        row = re.search(rf"^\| {kind} \|(.*)$", text, re.MULTILINE)
        assert row, f"docs/testing.md has no '| {kind} |' row"
        cells = [cell.strip() for cell in row.group(1).split("|") if cell.strip()]
        assert [float(cell) for cell in cells[:4]] == [bounds[d] for d in ("float64", "float32", "bfloat16", "float16")]


def test_p1_rule_is_rounding_not_a_departure():
    own = torch.tensor([[0.3, -0.0001], [25.0, 1.0]], dtype=torch.float64)
    assert explains_own_scores(own + 1e-7, own, rounding_rtol("float32"))  # a near-zero cosine: 1e-7 of its unit
    assert explains_own_scores(own * (1 + 5e-6), own, rounding_rtol("float32"))  # a logit of 25: relative
    assert not explains_own_scores(own * 1.3, own, rounding_rtol("float32"))  # a 30 % departure
    assert not explains_own_scores(own + 1e-4, own, rounding_rtol("float32"))
