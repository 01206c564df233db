"""``aggregate`` from its documented arguments alone (no Evaluator, no model): hand-written records whose
means are worked out by hand, records of other cases left out, and ``complete`` counted from the jobs."""

from __future__ import annotations

from types import SimpleNamespace

from faithclip.data.folders import LabelledSet
from faithclip.evaluation import EvalConfig, aggregate, case_jobs
from faithclip.metrics import METRICS


def record(case: str, method: str, values: dict, **extra) -> dict:
    return {"case": case, "method": method, "label": 0, "values": values, "curves": {}, "skipped": [], **extra}


def test_aggregate_needs_only_its_arguments():
    config = EvalConfig(model="tiny", data="hand", methods=["grad_eclip"], metrics=["zeroshot"], examples=1)
    data = LabelledSet("hand", ["c0", "c1"], [SimpleNamespace(case_id="a"), SimpleNamespace(case_id="b")])
    handle = SimpleNamespace(name="tiny", image_size=64, patch_size=8)
    prompts = SimpleNamespace(templates=["a photo of a {}.", "a {}."])
    records = [
        record("b", "-", {"zeroshot": {"top1": 0, "prob": 0.4}}),
        record("z", "-", {"zeroshot": {"top1": 1, "prob": 1.0}}),  # not a case of the data: left out
        record("a", "grad_eclip", {}, map=[[1.0, 0.0], [0.0, 0.0]]),
        record("a", "-", {"zeroshot": {"top1": 1, "prob": 0.8}}),
    ]
    results = aggregate(records, config, data, {"model_fingerprint": "f00d"}, handle, prompts)
    top1, prob = results["aggregate"]["-"]["zeroshot"]["top1"], results["aggregate"]["-"]["zeroshot"]["prob"]
    assert (top1["n"], top1["mean"]) == (2, 0.5)  # (1 + 0) / 2
    assert prob["n"] == 2 and abs(prob["mean"] - 0.6) < 1e-12  # (0.8 + 0.4) / 2
    assert results["aggregate"]["grad_eclip"] == {}  # zeroshot lives in the model-level record only
    assert [(r["case"], r["method"]) for r in results["per_image"]] == [("a", "-"), ("a", "grad_eclip"), ("b", "-")]
    example = {"case": "a", "image": "examples/a.png", "maps": {"grad_eclip": [[1.0, 0.0], [0.0, 0.0]]}}
    assert results["examples"] == [example]  # examples=1: the first case only
    assert results["data"]["prompts"] == "2 templates" and results["model"]["fingerprint"] == "f00d"
    assert case_jobs(config.methods, [METRICS.get("zeroshot")]) == [None, "grad_eclip"]
    assert results["complete"] is False  # b has no grad_eclip record: 3 of 2 cases x 2 jobs
    whole = aggregate(
        records + [record("b", "grad_eclip", {})], config, data, {"model_fingerprint": "f00d"}, handle, prompts
    )
    assert whole["complete"] is True
