"""The forwards a run needs (``evaluation/cost.py``), counted by hand on the tiny model, and the one line that
announces a slow run before its first record, with a given forward cost: nothing here is timed."""

from __future__ import annotations

import logging

import pytest
from test_evaluate import FAST_METRICS, tiny_shapes_clip

from faithclip.data.folders import shapes_set
from faithclip.evaluation import EvalConfig, Evaluator, cost

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def handle():
    return tiny_shapes_clip()  # 32 px crop, 8 px patches, 2 layers: a cascade of 5 steps


def test_forwards_per_record_counted_by_hand(handle):
    metrics = ["deletion_gradeclip", "insertion_rise", "road_morf", "pointing_game", "sanity_cascade"]
    # RISE: 4,000 masks; the cascade recomputes the map on 5 models; RISE's curve: 32 * 32 / 64 = 16 images
    assert cost.record_forwards("rise", metrics, handle, {}, {}) == {
        "rise's maps": 4000,
        "deletion_gradeclip of rise": 10,
        "insertion_rise of rise": 16,
        "road_morf of rise": 9,
        "sanity_cascade of rise": 5 * 4000,
    }
    # occlusion at 32 px: window round(32 / 7) = 5, stride 2: starts 0, 2, ..., 26 and 27 per axis (15), and the image
    assert cost.map_forwards("occlusion", {}, handle) == 15 * 15 + 1
    assert cost.map_forwards("occlusion", {"window": 16, "stride": 16}, handle) == 2 * 2 + 1
    assert cost.map_forwards("rise", {"masks": 300}, handle) == 300
    assert cost.map_forwards("m2ib", {"steps": 3}, handle) == 3 * 10
    options = {"deletion_gradeclip": {"steps": 50, "every": 5}, "insertion_rise": {"step": 128}}
    assert cost.record_forwards("grad_eclip", metrics[:2], handle, {}, options) == {
        "grad_eclip's maps": 1,
        "deletion_gradeclip of grad_eclip": 10,
        "insertion_rise of grad_eclip": 8,
    }
    assert cost.record_forwards("grad_eclip", ["sanity_cascade"], handle, {}, {}, maps=False) == {}
    assert cost.record_forwards(None, metrics, handle, {}, {}) == {"the unperturbed images": 1}


def test_a_slow_combination_is_announced_and_a_fast_one_is_not():
    slow = {"rise's maps": 8 * 4000, "sanity_cascade of rise": 8 * 14 * 4000, "attention_eclip's maps": 8}
    notice = cost.slow_run_notice(slow, 0.0065, records=16)
    assert notice == (
        "this run needs about 480,008 image forwards for 16 records, 93% of them for sanity_cascade of rise, "
        "at 6.5 ms each (measured): about 52 min of compute on this machine"
    )
    fast = {"grad_eclip's maps": 100, "deletion_gradeclip of grad_eclip": 1000, "the unperturbed images": 100}
    assert cost.slow_run_notice(fast, 0.0065, records=200) is None
    assert cost.duration(3 * 3600 + 7 * 60 + 10) == "3 h 07 min"


def _start(handle, tmp_path, monkeypatch, caplog, methods, metrics, seconds_per_forward):
    """Run up to the first record (then interrupted): what was announced."""
    monkeypatch.setattr(cost, "measure_forward", lambda *a, **k: seconds_per_forward())

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    evaluator = Evaluator(handle, EvalConfig(model="tiny", data="shapes", methods=methods, metrics=metrics))
    monkeypatch.setattr(evaluator, "run_case", interrupted)
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        evaluator.run(shapes_set(32, 4), tmp_path / "-".join(methods), progress=False, report=False)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_evaluate_announces_a_slow_run_before_its_first_record(handle, tmp_path, monkeypatch, caplog):
    # 4 images: rise 4 * (4,000 + 5 * 4,000 + 16), attention_eclip 4 * (1 + 5 + 16); no model-level record
    warned = _start(
        handle,
        tmp_path,
        monkeypatch,
        caplog,
        ["attention_eclip", "rise"],
        ["sanity_cascade", "insertion_rise"],
        lambda: 0.01,
    )
    assert warned == [
        "this run needs about 96,152 image forwards for 8 records, 83% of them for sanity_cascade of rise, at "
        "10.0 ms each (measured): about 16 min of compute on this machine"
    ]

    def never():
        raise AssertionError("a run of few forwards times nothing")

    assert _start(handle, tmp_path, monkeypatch, caplog, ["grad_eclip"], FAST_METRICS, never) == []
