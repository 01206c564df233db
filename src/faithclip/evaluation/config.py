"""What an evaluation run computes, and whether it may run: the settings (``EvalConfig``), the methods and
metrics they resolve to, the run's identity (pinned in ``config.json``; a resumed or merged run must match
it, and ``describe_changes`` names what differs), and every check that refuses a run before anything is
written: options, data, identities, unreadable images."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

import faithclip.methods  # noqa: F401  (registers the methods)
from faithclip.data.digests import FileDigests
from faithclip.data.folders import LabelledSet
from faithclip.errors import FaithclipError
from faithclip.metrics import METRICS
from faithclip.models.clip import ModelHandle
from faithclip.models.families import Family
from faithclip.models.fingerprint import (
    code_versions,
    config_identity,
    device_identity,
    model_fingerprint,
    preprocess_identity,
    tokenizer_fingerprint,
    unreadable_words,
)
from faithclip.registry import METHODS, check_options

logger = logging.getLogger(__name__)

DIGESTS_NAME = ".data-digests.json"  # the file-hash cache of the run's data (data/digests.py)
DEFAULT_METRICS = (
    "zeroshot",
    "deletion_gradeclip",
    "insertion_gradeclip",
    "deletion_rise",
    "insertion_rise",
    "pointing_game",
    "energy_pointing_game",
)
DEFAULT_METHODS = ("grad_eclip", "attention_eclip")


class EvaluationError(FaithclipError):
    """The evaluation cannot run or resume as asked."""


@dataclass
class EvalConfig:
    """What an evaluation run computes; ``identity()`` must match for a run to resume."""

    model: str
    data: str
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    limit: int | None = None
    seed: int = 0
    batch_size: int = 32
    examples: int = 4  # cases whose maps are kept for the report's overlays
    # deprecated, no effect: the perturbed images of consecutive records are streamed into full forwards
    # (streaming.ForwardStream) whatever it says; kept so that existing calls and commands still run
    images_per_step: int = 1
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # precomputed maps (data/maps.py) scored instead of running the methods; their bytes join the identity
    maps: str | None = None
    # write every computed map to OUT/maps/ (data/maps.py format; not part of the identity)
    save_maps: bool = False

    def identity(self, handle: ModelHandle, data: LabelledSet, digests: FileDigests | None = None) -> dict[str, Any]:
        """Everything a record's numbers depend on, as JSON. ``data`` is the FULL set: ``limit`` only says
        how many of its cases to evaluate, so a run can be extended with a larger ``--limit`` in the same
        directory. ``digests`` caches the data files' hashes."""
        identity = {
            "model": self.model,
            "model_fingerprint": model_fingerprint(handle),
            "model_config": config_identity(handle),
            "model_preprocess": preprocess_identity(handle),
            "model_tokenizer": tokenizer_fingerprint(handle),
            "versions": code_versions(),
            "data": data.name,
            "data_fingerprint": data.fingerprint(digests),
            "data_cases": len(data),
            "data_class_names": list(data.class_names),
            "data_prompts": data.prompts_fingerprint(),
            "methods": list(self.methods),
            "metrics": list(self.metrics),
            "seed": self.seed,
            "examples": self.examples,
            "metric_options": {m: self.options_for(m) for m in self.metrics},
            "method_options": {m: dict(self.method_options.get(m, {})) for m in self.methods},
            # records computed by a version whose metrics returned other values cannot be mixed in
            "metric_outputs": {m: list(METRICS.get(m).outputs) for m in self.metrics},
            # both change the last digits (BLAS blocks other batch sizes and thread counts differently:
            # measured up to 1.1e-6 and 3e-4 relative), so a run keeps the ones it started with
            "batch_size": self.batch_size,
            "threads": torch.get_num_threads(),
            # a GPU, another GPU model or half precision change the numbers too
            "model_device": device_identity(handle),
        }
        if self.maps is not None:
            from faithclip.data.maps import MapFolder

            identity["maps"] = {"dir": str(self.maps), "fingerprint": MapFolder(self.maps).fingerprint()}
        return json.loads(json.dumps(identity, default=str))  # as config.json will read back

    def options_for(self, metric: str) -> dict[str, Any]:
        return dict(self.metric_options.get(metric, {}))


# what a changed identity key means, for the message that refuses a resume
_IDENTITY_NAMES = {
    "model_fingerprint": "the model's weights",
    "model_config": "the model's config.json",
    "model_preprocess": "the model's preprocessing",
    "model_tokenizer": "the model's tokenizer",
    "versions": "the code's versions",
    "data_fingerprint": "the data's files or scenes",
    "data_class_names": "the class names",
    "data_prompts": "the prompt templates",
    "batch_size": "--batch-size",
    "threads": "--threads",
    "model_device": "--device / --dtype, or the processor (another CPU or GPU kind rounds differently)",
    "maps": "the --maps files",
}
_ABSENT = object()


def describe_changes(previous: dict[str, Any], current: dict[str, Any], limit: int = 4) -> list[str]:
    """Each difference between two identities as ``"key.sub (what it is): old -> new"``, at most ``limit``
    (then a count of the rest)."""
    changes: list[str] = []

    def short(value: Any) -> str:
        text = "(absent)" if value is _ABSENT else json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    def walk(path: str, old: Any, new: Any) -> None:
        if old == new:
            return
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                walk(f"{path}.{key}", old.get(key, _ABSENT), new.get(key, _ABSENT))
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            for index, (a, b) in enumerate(zip(old, new)):
                walk(f"{path}[{index}]", a, b)
        else:
            changes.append(f"{path}: {short(old)} -> {short(new)}")

    for key in sorted(set(previous) | set(current)):
        before = len(changes)
        walk(key, previous.get(key, _ABSENT), current.get(key, _ABSENT))
        if key in _IDENTITY_NAMES and len(changes) > before:
            changes[before] = f"{_IDENTITY_NAMES[key]} ({changes[before]})"
    if len(changes) > limit:
        changes = changes[:limit] + [f"{len(changes) - limit} more"]
    return changes


def resolve_methods(names: Iterable[str], family: Family | None = None) -> list[str]:
    """The methods to evaluate (``all``: every image-side method that supports ``family``); a method without
    an image side, or that does not run on ``family``, is refused in one line."""
    names = list(names)
    if names == ["all"]:
        return [
            spec.name for spec in METHODS if spec.image is not None and (family is None or spec.supports(family.name))
        ]
    for name in names:
        spec = METHODS.get(name)
        if spec.image is None:
            raise EvaluationError(f"method {name!r} has no image-side explanation; it cannot be evaluated on images.")
        if family is not None:
            spec.check_family(family.name)
    return names


def resolve_metrics(names: Iterable[str], family: Family | None = None) -> list[str]:
    """The metrics to compute (``all``: every one ``family`` defines); one the family's score does not define
    (``Family.refused_metrics``) is refused in one line, before any work."""
    names = list(names)
    refused = family.refused_metrics if family is not None else {}
    if names == ["all"]:
        return [name for name in METRICS.names() if name not in refused]
    for name in names:
        METRICS.get(name)
    wrong = [name for name in names if name in refused]
    if wrong:
        reasons = sorted({refused[name] for name in wrong})
        allowed = [name for name in METRICS.names() if name not in refused]
        raise EvaluationError(
            f"{', '.join(wrong)} cannot run on {family.name} models: {'; '.join(reasons)}. "
            f"For {family.name}: {', '.join(allowed)}."
        )
    return names


def maps_methods(config: EvalConfig) -> tuple[Any, list[str]]:
    """The maps folder and the methods to score: those of its files (``--methods`` left at its default or
    ``all``), or the ones named, each of which must have files."""
    from faithclip.data.maps import MapFolder

    folder = MapFolder(config.maps)
    if list(config.methods) in (list(DEFAULT_METHODS), ["all"]):
        return folder, folder.methods
    absent = [m for m in config.methods if m not in folder.methods]
    if absent:
        raise EvaluationError(
            f"{folder.root} has no maps of {', '.join(absent)}; it holds {', '.join(folder.methods)}."
        )
    return folder, list(config.methods)


def check_options_given(handle: ModelHandle, config: EvalConfig) -> None:
    """Every method and metric option of ``config`` (methods and metrics resolved) names one evaluated and is
    one of its options, with a value it takes: checked before a folder exists, so a refused run leaves
    nothing behind."""
    from faithclip.api import tower_layers

    for method, options in config.method_options.items():
        if method not in config.methods:
            raise EvaluationError(f"options given for method {method!r}, which is not among the methods evaluated.")
        check_options(
            method,
            [METHODS.get(method).image],
            options,
            spelled=lambda key, m=method: f"{m}.{key}",
            layers=tower_layers(handle, "image"),
            error=EvaluationError,
        )
    for metric, options in config.metric_options.items():
        if metric not in config.metrics:
            raise EvaluationError(f"options given for {metric!r}, which is not among the metrics evaluated.")
        spec = METRICS.get(metric)
        check_options(
            metric,
            [spec.plan if spec.plan is not None else spec.run],
            options,
            spelled=lambda key, m=metric: f"{m}.{key}",
            error=EvaluationError,
        )


def check_data(handle: ModelHandle, data: LabelledSet, limit: int | None) -> None:
    """Refuse data the run cannot evaluate, before anything is written: a ``limit`` beyond its cases, class
    names the model does not have (a classifier's own classes), or words its tokenizer cannot read."""
    if limit is not None and limit > len(data):
        raise EvaluationError(
            f"limit {limit} is more than the {len(data)} cases of {data.name}; ask for at most {len(data)} "
            "(for --data shapes, --count sets how many scenes there are)."
        )
    handle.family.check_class_names(handle.model, data.class_names)  # a classifier: its own classes
    unreadable = unreadable_words(handle, data.class_names)
    if unreadable:
        listed = "; ".join(f"{name!r} ({', '.join(words)})" for name, words in list(unreadable.items())[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise EvaluationError(
            f"the model's tokenizer cannot read {len(unreadable)} of the {len(data.class_names)} class names of "
            f"{data.name}: it maps these words to its unknown token: {listed}{more}. Its zero-shot weights for "
            "them would be meaningless; use a model whose vocabulary holds them, or rename the classes."
        )


def check_identity(out: Path, identity: dict[str, Any], digests: FileDigests) -> None:
    """Refuse a folder whose ``config.json`` holds another identity, naming what changed (and which data
    files changed since the run began); a folder without one holds no run yet."""
    config_path = out / "config.json"
    if not config_path.exists():
        return
    previous = json.loads(config_path.read_text())
    changes = describe_changes(previous, identity)
    if changes:
        files = digests.changed()
        if files:
            changes.append(
                f"files changed since the run began: {', '.join(files[:3])}"
                + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            )
        raise EvaluationError(
            f"{out} holds a run with different settings: {'; '.join(changes)}. Resume with the same model, "
            "data and options, or pass a new --out directory."
        )


def check_merged(sources: Sequence[Path], identity: dict[str, Any], digests: FileDigests) -> None:
    """Every folder merged must hold records of exactly this run (the same ``config.json`` identity)."""
    for source in sources:
        if not (source / "config.json").is_file():
            raise EvaluationError(
                f"{source} holds no evaluation run (no config.json); merge only folders "
                "written by faithclip evaluate with the same options."
            )
        check_identity(source, identity, digests)


def check_readable(data: LabelledSet, owns: Callable[[int], bool] | None = None) -> None:
    """Read every case of ``data`` (those at the positions ``owns``, when given: a shard's) once, before a new
    run creates its folder: a corrupt or unreadable image is found before the first record, not after hours
    of them, and the fixed file is then part of the run's data fingerprint from the start. One line names the
    first bad file and how many there are."""
    if len(data) > 100:
        logger.info("reading the %d images of %s before the first record", len(data), data.name)
    problems = []
    for index, load in enumerate(data.cases):
        if owns is not None and not owns(index):
            continue
        try:
            load()
        except FaithclipError as error:
            problems.append(str(error))
    if problems:
        more = (
            f" (and {len(problems) - 1} more unreadable case{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        )
        raise EvaluationError(
            f"{data.name}: {problems[0].rstrip('.')}{more}. Nothing was computed; fix or remove the file(s) "
            "and run the same command again."
        )
