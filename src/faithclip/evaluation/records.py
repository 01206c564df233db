"""What a record of a run holds. A record is one finished (case, job): the job is a method, or ``'-'``, the
image's model-level record (model-level metrics, and the chance level of per-method ones). This module says
which jobs each case has (``case_jobs``), which record holds which metric's values (``in_record``), how a
metric's value is stored in a record (``store``), and what makes a read-back record unfit for a run
(``check_record``, ``value_problem``: a damaged line is redone, never silently counted)."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

# The outputs whose values are bounded by their definition: a hit is 0 or 1, a share or a probability
# lies in [0, 1], a Spearman correlation in [-1, 1]. Every other output is a finite number or null.
OUTPUT_RANGES: dict[tuple[str, str], tuple[float, float, bool]] = {  # (low, high, whole numbers only)
    ("pointing_game", "hit"): (0, 1, True),
    ("energy_pointing_game", "energy"): (0, 1, False),
    ("zeroshot", "top1"): (0, 1, True),
    ("zeroshot", "prob"): (0, 1, False),
    ("sanity_cascade", "final"): (-1, 1, False),
    ("sanity_cascade", "mean"): (-1, 1, False),
}


def model_level(spec: Any) -> bool:
    """Whether the image's model-level record ('-') holds values of ``spec``: a model-level metric, or the
    chance level of a per-method one (``MetricSpec.chance``)."""
    return not spec.per_method or spec.chance is not None


def in_record(spec: Any, method: str) -> bool:
    """Whether the record of ``method`` ('-': the image's model-level record) holds values of ``spec``."""
    return model_level(spec) if method == "-" else spec.per_method


def case_jobs(methods: Sequence[str], metrics: Sequence[Any]) -> list[str | None]:
    """The records of every case, in the order they are computed: ``None`` (the model-level record, ``'-'``)
    when any of ``metrics`` has model-level values, then one per method. A complete run holds
    ``len(cases) * len(case_jobs(...))`` records."""
    return ([None] if any(model_level(m) for m in metrics) else []) + list(methods)


def check_record(record: dict[str, Any], methods: Sequence[str], metrics: Sequence[Any]) -> str | None:
    """What a read-back record lacks for a run of ``methods`` and ``metrics`` (``None``: nothing)."""
    method = record["method"]
    if method != "-" and method not in methods:
        return f"a record of method {method!r}, which this run does not evaluate"
    skipped = record.get("skipped") or []
    for spec in metrics:
        if not in_record(spec, method) or spec.name in skipped:
            continue
        values = record["values"].get(spec.name)
        if not isinstance(values, dict) or not set(spec.outputs) <= set(values):
            return f"no values of {spec.name}"
        for output in spec.outputs:
            problem = value_problem(spec.name, output, values[output])
            if problem:
                return problem
    return None


def value_problem(metric: str, output: str, value: Any) -> str | None:
    """What is wrong with a record's value of ``metric``'s ``output`` (``None``: a number in its range, or
    null for undefined): a hand-edited ``"hit": 7.5`` or ``"hit": "yes"`` is damage, not a result."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{metric}.{output} is {json.dumps(value)[:30]}, not a number"
    if not math.isfinite(value):
        return f"{metric}.{output} is {value}, not a finite number (undefined values are null)"
    low, high, whole = OUTPUT_RANGES.get((metric, output), (-math.inf, math.inf, False))
    slack = 0.0 if whole else 1e-6  # a share or correlation summed in floats may pass its bound by rounding
    if not low - slack <= value <= high + slack or (whole and value != int(value)):
        return f"{metric}.{output} is {value}, outside its range " + (
            f"({low:g} or {high:g})" if whole else f"[{low:g}, {high:g}]"
        )
    return None


def store(record: dict[str, Any], metric: str, value: Any) -> None:
    """Put a metric's value (``MetricValue``: values, curves, details) into ``record``."""
    record["values"][metric] = value.values
    if value.curves:
        record["curves"][metric] = {name: [x, y] for name, (x, y) in value.curves.items()}
    if value.details:
        record.setdefault("details", {})[metric] = value.details
