"""The results of a run, from its records: ``aggregate`` gives ``results.json``'s content (schema
``report/results.schema.json``): per method and metric the mean and a 95 % bootstrap interval over images
(``mean_ci``), the mean curves with point-wise bands (``curve_band``), the example maps, and what each
method and metric was; ``write_outputs`` renders ``results.md`` and ``report.html`` from it
(``report/evaluation_report.py``) and publishes the three as one set (``rundir.write_result_set``)."""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faithclip._version import __version__
from faithclip.data.folders import LabelledSet
from faithclip.evaluation.cases import example_name
from faithclip.evaluation.config import EvalConfig
from faithclip.evaluation.records import case_jobs, in_record
from faithclip.evaluation.rundir import write_result_set
from faithclip.explanation import dumps_strict, strict_json
from faithclip.metrics import METRICS
from faithclip.metrics.zeroshot import PromptSet
from faithclip.models.clip import ModelHandle
from faithclip.registry import METHODS

SCHEMA = "faithclip.evaluation/3"  # 2: strict JSON (null for undefined values), the full run identity;
# 3: chance levels (aggregate["-"] of metrics with MetricSpec.chance) and curve bands (low, high)
CI_RESAMPLES = 2000


def mean_ci(values: list[float], seed: int) -> dict[str, Any]:
    """Mean and a 95 % bootstrap percentile interval (``CI_RESAMPLES`` resamples) over the finite values."""
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    summary: dict[str, Any] = {"n": int(finite.size), "missing": len(values) - int(finite.size)}
    if finite.size == 0:
        return {**summary, "mean": None, "ci95": None}
    summary["mean"] = float(finite.mean())
    if finite.size < 2:
        summary["ci95"] = None
        return summary
    generator = np.random.default_rng(seed)
    resampled = finite[generator.integers(0, finite.size, size=(CI_RESAMPLES, finite.size))].mean(axis=1)
    summary["ci95"] = [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]
    return summary


def aggregate(
    records: list[dict[str, Any]],
    config: EvalConfig,
    data: LabelledSet,
    identity: dict[str, Any],
    handle: ModelHandle,
    prompt_set: PromptSet,
) -> dict[str, Any]:
    """The results of ``records``, as ``results.json`` holds them (before strict JSON: ``write_outputs``).

    ``config``: the run's settings with its methods and metrics as evaluated (``Evaluator.config``: ``all``
    resolved, the methods of ``--maps`` read); ``data``: the cases evaluated (records of other cases are left
    out; ``complete`` says whether every case has every record of ``case_jobs``); ``identity``: the run's
    identity (``config.json``); ``handle``: the model; ``prompt_set``: the class prompts the run scored with."""
    import transformers

    metrics = [METRICS.get(name) for name in config.metrics]
    case_ids = [load.case_id for load in data.cases]
    records = in_case_order(records, case_ids)
    summary, curves = summarise(records, config.methods, metrics, config.seed)
    return {
        "schema": SCHEMA,
        "faithclip_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "model": {
            "id": config.model,
            "name": handle.name,
            "fingerprint": identity["model_fingerprint"],
            "image_size": handle.image_size,
            "patch_size": handle.patch_size,
        },
        "data": {
            "name": data.name,
            "num_cases": len(data),
            "num_classes": len(data.class_names),
            "has_masks": data.has_masks,
            "prompts": "own prompts" if data.prompts is not None else f"{len(prompt_set.templates)} templates",
        },
        "seed": config.seed,
        "limit": config.limit,
        "seeds": {"deletion_colours": "crc32(f'{seed}|{case}|{metric}')", "bootstrap": config.seed},
        "confidence_interval": f"95% bootstrap percentile, {CI_RESAMPLES} resamples over images",
        "config": identity,
        "methods": method_entries(config),
        "metrics": metric_entries(config, metrics),
        "aggregate": summary,
        "curves": curves,
        "examples": example_maps(records, case_ids[: config.examples]),
        "per_image": records,
        "complete": len(records) == len(case_ids) * len(case_jobs(config.methods, metrics)),
    }


def in_case_order(records: list[dict[str, Any]], case_ids: list[str]) -> list[dict[str, Any]]:
    """The records of ``case_ids``, in their order (then by method); records of other cases left out."""
    wanted = set(case_ids)
    records = [r for r in records if r["case"] in wanted]
    order = {case: i for i, case in enumerate(case_ids)}
    records.sort(key=lambda r: (order[r["case"]], r["method"]))
    return records


def summarise(
    records: list[dict[str, Any]], methods: list[str], metrics: list[Any], seed: int
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, dict[str, Any]]]]:
    """Per record job ('-', then each method) and metric: each output's ``mean_ci`` over the images, and
    each curve's mean with its ``curve_band``. A job without records is left out."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for method in ["-"] + methods:
        mine = [r for r in records if r["method"] == method]
        if not mine:
            continue
        per_metric: dict[str, dict[str, Any]] = {}
        for spec in metrics:
            if not in_record(spec, method):
                continue
            outputs = per_metric.setdefault(spec.name, {})
            for output in spec.outputs:
                values = [r["values"][spec.name][output] for r in mine if spec.name in r["values"]]
                outputs[output] = mean_ci(values, seed)
            curve_sets = [r["curves"][spec.name] for r in mine if spec.name in r.get("curves", {})]
            if curve_sets:
                curves.setdefault(method, {})[spec.name] = {
                    name: {
                        "x": curve_sets[0][name][0],
                        "y": _nanmean([c[name][1] for c in curve_sets]),
                        "n": len(curve_sets),
                        **curve_band([c[name][1] for c in curve_sets], seed),
                    }
                    for name in curve_sets[0]
                }
        summary[method] = per_metric
    return summary, curves


def example_maps(records: list[dict[str, Any]], case_ids: list[str]) -> list[dict[str, Any]]:
    """The maps the records of ``case_ids`` kept (the report's overlays), with each case's example crop."""
    examples = []
    for case_id in case_ids:
        maps = {r["method"]: r["map"] for r in records if r["case"] == case_id and "map" in r}
        if maps:
            examples.append({"case": case_id, "image": f"examples/{example_name(case_id)}.png", "maps": maps})
    return examples


def method_entries(config: EvalConfig) -> list[dict[str, Any]]:
    """What each method evaluated is: its paper, the options given and its defaults, what it modifies."""
    entries = []
    for name in config.methods:
        if config.maps is not None:
            entries.append(
                {
                    "name": name,
                    "paper": f"precomputed maps ({Path(config.maps)})",
                    "options": {},
                    "defaults": {},
                    "modifies_model": False,
                    "modifies_input": False,
                }
            )
            continue
        spec = METHODS.get(name)
        entries.append(
            {
                "name": name,
                "paper": spec.paper,
                "options": _jsonable(config.method_options.get(name, {})),
                "defaults": _jsonable(spec.defaults),
                "modifies_model": spec.modifies_model,
                "modifies_input": spec.modifies_input,
            }
        )
    return entries


def metric_entries(config: EvalConfig, metrics: list[Any]) -> list[dict[str, Any]]:
    """What each metric computed is: its protocol (a non-default option joins its label), paper, options,
    column names and chance level."""
    entries = []
    for spec in metrics:
        chosen = _jsonable(config.options_for(spec.name))
        chosen.pop("batch_size", None)  # does not change the numbers
        # A non-default option changes the protocol, so it becomes part of every label of the metric.
        protocol = spec.protocol_label(chosen)
        entries.append(
            {
                "name": spec.name,
                "category": spec.category,
                "higher_is_better": spec.higher_is_better,
                "protocol": protocol,
                "paper": spec.paper,
                "summary": spec.summary,
                "per_method": spec.per_method,
                "options": {**_jsonable(spec.defaults), **chosen},
                "columns": {output: f"{spec.outputs[output]} [{protocol}]" for output in spec.outputs},
                "chance": (spec.chance_label or spec.name) if spec.chance is not None else None,
            }
        )
    return entries


def _nanmean(rows: list[list[float]]) -> list[float | None]:
    """Point-wise mean over images of curves, leaving out undefined (NaN) points; None where all are."""
    values = np.array(rows, dtype=np.float64)  # (images, points)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    return [float(t / c) if c else None for t, c in zip(sums, counts)]


def curve_band(rows: list[list[float]], seed: int, chunk: int = 250) -> dict[str, list[float | None]]:
    """Point-wise 95 % bootstrap percentile band of the mean curve over images: ``CI_RESAMPLES`` resamples
    of the images (the same resamples for every point), each point's mean over the resampled images that
    define it (NaN points left out, as in ``_nanmean``). A point defined by fewer than 2 images has none."""
    values = np.array(rows, dtype=np.float64)  # (images, points)
    images, points = values.shape
    finite = np.isfinite(values)
    defined = np.where(finite, values, 0.0)
    counts_ok = finite.sum(axis=0) >= 2
    generator = np.random.default_rng(seed)
    means = np.empty((CI_RESAMPLES, points))
    for start in range(0, CI_RESAMPLES, chunk):  # resample weights in chunks: (chunk, images) at a time
        size = min(chunk, CI_RESAMPLES - start)
        picks = generator.integers(0, images, size=(size, images))
        weights = np.zeros((size, images))
        np.add.at(weights, (np.arange(size)[:, None], picks), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + size] = (weights @ defined) / (weights @ finite)
    with warnings.catch_warnings():  # a point no resample defines is all-NaN: it gets None below
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(means, 2.5, axis=0)
        high = np.nanpercentile(means, 97.5, axis=0)
    return {
        "low": [float(v) if ok and np.isfinite(v) else None for v, ok in zip(low, counts_ok)],
        "high": [float(v) if ok and np.isfinite(v) else None for v, ok in zip(high, counts_ok)],
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_outputs(results: dict[str, Any], out: Path, report: bool = True) -> dict[str, Any]:
    """``results.json`` (strict JSON: undefined values are null) and ``results.md``; ``report.html``
    (matplotlib figures) unless ``report=False``; published as one set. Returns the results as written."""
    from faithclip.report.evaluation_report import render_html, render_markdown

    results = strict_json(results)
    files = {"results.json": dumps_strict(results, indent=1).encode(), "results.md": render_markdown(results).encode()}
    if report:
        files["report.html"] = render_html(results, out).encode()
    write_result_set(out, files)
    return results
