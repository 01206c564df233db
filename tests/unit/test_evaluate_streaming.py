"""The perturbed images of consecutive records share full forwards (``evaluation/streaming.py``), and no
record's numbers change for it.

What is compared: every value and curve point of every record of a streamed run, against the same record
computed the way a run with one image per step computed it before streaming: its own plans' images, in
their order, cut into forwards of ``batch_size`` images and the last one padded with zero images (written
out here, independently of ``ForwardStream``). The maps and the plans come from the same ``run_case`` in
both; what differs is only which other rows share a forward. Compared at the float32 rounding bound of
``tests/tolerance.py`` (on one processor kind the two are bit-identical: a row of a forward of one shape is
computed from that row alone).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_evaluate import tiny_shapes_clip

from faithclip.data.folders import shapes_set
from faithclip.evaluation import EvalConfig, Evaluator, evaluate, prepare
from faithclip.evaluation.streaming import ForwardStream
from tolerance import assert_rounding_close

PLANNED = ["deletion_gradeclip", "insertion_gradeclip", "deletion_rise", "road_morf"]
BATCH = 16

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def handle():
    return tiny_shapes_clip()


def padded_alone(evaluator: Evaluator, prepared, method: str) -> dict:
    """One record as before streaming: its plans' images alone, in forwards of BATCH, the last padded."""
    deferred = []
    record = evaluator.run_case(prepared, method, False, deferred)
    images = torch.cat([batch for _, plan in deferred for batch in plan.batches])  # (n, 3, H, W)
    logits = []
    for start in range(0, images.shape[0], BATCH):
        chunk = images[start : start + BATCH]
        rows = chunk.shape[0]
        chunk = torch.cat([chunk, chunk.new_zeros(BATCH - rows, *chunk.shape[1:])])  # (BATCH, 3, H, W)
        scores = prepared.score_ctx.score_images(chunk, batch_size=BATCH)[:rows]
        logits.append(evaluator.handle.family.class_logits(evaluator.handle.model, scores))
    logits = torch.cat(logits)  # (n, K)
    offset = 0
    for name, plan in deferred:
        value = plan.finish(logits[offset : offset + plan.count])
        offset += plan.count
        record["values"][name] = value.values
        record["curves"][name] = value.curves
    return record


def test_streamed_records_equal_each_record_scored_alone_in_full_forwards(handle, tmp_path, monkeypatch):
    data = shapes_set(32, 4)
    config = EvalConfig(model="tiny", data="shapes", metrics=PLANNED, batch_size=BATCH, seed=5, examples=0)
    forwards = []
    original = ForwardStream._forward
    monkeypatch.setattr(ForwardStream, "_forward", lambda self: (forwards.append(self.buffered), original(self)))
    results = evaluate(handle, data, tmp_path / "run", config, progress=False, report=False)
    monkeypatch.undo()

    # every forward is full but the run's last: the images of consecutive records share them
    images = sum(forwards)
    assert forwards[:-1] == [BATCH] * (len(forwards) - 1) and 0 < forwards[-1] <= BATCH
    assert len(forwards) == math.ceil(images / BATCH)
    # 2 methods x 4 images; 10 + 10 + 16 + 9 perturbed images per record (32 px, 8 px patches)
    assert images == 2 * 4 * (10 + 10 + 16 + 9)

    evaluator = Evaluator(handle, config)
    evaluator._start_cases(data, tmp_path / "oracle")
    streamed = {(r["case"], r["method"]): r for r in results["per_image"]}
    assert len(streamed) == 8
    for load in data.cases:
        prepared = prepare(handle, load())
        for method in config.methods:
            expected = padded_alone(evaluator, prepared, method)
            actual = streamed[(load.case_id, method)]
            for name in PLANNED:
                for key, value in expected["values"][name].items():
                    assert_rounding_close(
                        actual["values"][name][key], value, what=f"{load.case_id} {method} {name}.{key}"
                    )
                for key, (_, y) in expected["curves"][name].items():
                    what = f"{load.case_id} {method} {name} curve {key}"
                    assert_rounding_close(actual["curves"][name][key][1], y, what=what)
