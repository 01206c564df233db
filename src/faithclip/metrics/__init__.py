"""Evaluation metrics, one module each; importing this package registers them in ``METRICS``.

A metric has a pure tensor core (e.g. ``pointing.energy_share(map, mask)``) and a thin runner
``fn(case: MetricCase, **options) -> MetricValue`` that calls the model where the metric needs it.
Every number a metric produces carries the metric's ``protocol`` in its label, so that numbers measured
under different protocols (Grad-ECLIP's deletion vs RISE's deletion) are never put side by side unnamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable

from faithclip.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    ``outputs`` maps each scalar the metric returns to its human label; the report shows
    ``f"{label} [{protocol}]"``. ``per_method``: False for model-level metrics (zero-shot accuracy),
    which are computed once per image, not once per (image, method). ``needs_mask``: skipped on data
    without object masks.
    """

    name: str
    category: str  # faithfulness | localisation | sanity | accuracy
    higher_is_better: bool
    protocol: str
    summary: str
    paper: str
    run: Callable[..., Any]
    outputs: dict[str, str] = field(default_factory=dict)
    per_method: bool = True
    needs_mask: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    # (case, **options) -> deletion.ScoringPlan: the perturbed images to score and how to finish; a metric
    # that has one has its images scored in forwards shared with other records' (evaluation/streaming.py)
    plan: Callable[..., Any] | None = None
    # True when the metric calls the method again (on other models): it cannot score precomputed maps
    recomputes_map: bool = False
    # (case, **options) -> MetricValue: the level a map that knows nothing of the model reaches on this case
    # (the same outputs as ``run``), computed once per image from the data alone; ``chance_label`` says which
    # map (e.g. "image centre"). The report shows it beside the methods.
    chance: Callable[..., Any] | None = None
    chance_label: str = ""

    def protocol_label(self, options: dict[str, Any] | None = None) -> str:
        """The protocol with its options: ``protocol`` may name options (``"pointing, {tolerance:g} px"``);
        chosen options it does not name are appended, so a changed setting always shows."""
        options = dict(options or {})
        label = self.protocol.format(**{**self.defaults, **options})
        rest = {k: v for k, v in options.items() if "{" + k not in self.protocol}
        return label + ("; " + ", ".join(f"{k}={v}" for k, v in rest.items()) if rest else "")

    def column(self, output: str, options: dict[str, Any] | None = None) -> str:
        """The label of one output with its protocol, e.g. ``deletion AUC [rise]``."""
        return f"{self.outputs.get(output, output)} [{self.protocol_label(options)}]"


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(spec: MetricSpec) -> MetricSpec:
    return METRICS.add(spec.name, spec)


_MODULES = ("deletion", "pointing", "sanity", "zeroshot", "segmentation", "road")

for _name in _MODULES:
    import_module(f"{__name__}.{_name}")

__all__ = ["METRICS", "MetricSpec", "register_metric"]
