"""The evaluation runner: methods x metrics over a labelled image set, resumable and reproducible.

For every case (image, label) the runner builds the scored image (the model's standard preprocessing),
aligns the object mask to it, runs each method on the model's own forward for the label's classifier
weight (the family's default target: CLIP's and BLIP's cosine, SigLIP's logit, a classifier's class logit;
``Family.class_weights``, ``class_logits`` and ``label_probability`` say what the metrics read), and runs
each metric. One JSON line per finished (case, method) is appended to
``records.jsonl`` and flushed to disk before the next is computed, so an interrupted run resumes where it
stopped: finished records are read back, never recomputed. ``config.json`` pins everything the records'
numbers depend on (model weights, configuration, preprocessing and tokenizer; code versions; the data's
bytes, class names and prompts; methods, metrics, options, seed, batch size, threads); a resumed run with
anything different is refused with a message naming what changed. Random draws (deletion colours) are
seeded from ``(seed, case, metric)``, so the same seed gives the same numbers, in any order and after any
interruption. One run at a time holds the folder (``rundir.RunLock``). ``results.json`` (strict JSON,
schema ``report/results.schema.json``), ``results.md`` and ``report.html`` are rendered from the records
at the end and published together (``rundir.write_result_set``).

Many processes: ``Shard(i, n)`` computes the cases at positions ``i, i + n, ...`` into its own
``records.shard-i-of-n.jsonl`` (the folder lock shared by the shards, its own lock exclusive, the same
``config.json``); a run without a shard, or ``Evaluator.merge`` (which computes nothing), reads every
record file, checks each line, and aggregates exactly as one process would. A record's numbers do not
depend on the process that computed it: the identity pins the batch size, the thread count, the device
kind and dtype and the processor (a CPU's name and instruction set, a GPU's name: another kind runs other
kernels, whose results agree to float rounding only), and nothing else of a process enters a record (seeds
are per case and metric).
``faithclip.evaluation.distributed`` runs the shards under torch.distributed.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

import faithclip.methods  # noqa: F401  (registers the methods)
from faithclip._version import __version__
from faithclip.data.digests import FileDigests
from faithclip.data.folders import LabelledImage, LabelledSet, aligned_mask
from faithclip.errors import FaithclipError
from faithclip.explanation import dumps_strict, strict_json, write_atomic
from faithclip.files import OutputError
from faithclip.methods.context import Context
from faithclip.metrics import METRICS
from faithclip.metrics.case import MetricCase
from faithclip.metrics.zeroshot import PromptSet, build_prompt_set
from faithclip.models.clip import ClipHandle, TextBatch
from faithclip.models.families import Family
from faithclip.models.fingerprint import (code_versions, config_identity, device_identity, model_fingerprint,
                                          preprocess_identity, tokenizer_fingerprint, unreadable_words)
from faithclip.registry import METHODS, check_options
from faithclip.evaluation.rundir import (LOCK_NAME, RECORDS_NAME, RecordFile, RunLock, create_once, finished_keys, record_paths,
                              shard_records_name, write_result_set)

logger = logging.getLogger(__name__)

SCHEMA = "faithclip.evaluation/3"  # 2: strict JSON (null for undefined values), the full run identity;
# 3: chance levels (aggregate["-"] of metrics with MetricSpec.chance) and curve bands (low, high)
DIGESTS_NAME = ".data-digests.json"  # the file-hash cache of the run's data (data/digests.py)
DEFAULT_METRICS = ("zeroshot", "deletion_gradeclip", "insertion_gradeclip", "deletion_rise", "insertion_rise",
                   "pointing_game", "energy_pointing_game")
DEFAULT_METHODS = ("grad_eclip", "attention_eclip")
CI_RESAMPLES = 2000


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
    # images whose perturbed images are scored together (not part of the identity: no number depends on it)
    images_per_step: int = 1
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # precomputed maps (data/maps.py) scored instead of running the methods; their bytes join the identity
    maps: str | None = None
    # write every computed map to OUT/maps/ (data/maps.py format; not part of the identity)
    save_maps: bool = False

    def identity(self, handle: ClipHandle, data: LabelledSet, digests: FileDigests | None = None) -> dict[str, Any]:
        """Everything a record's numbers depend on, as JSON. ``data`` is the FULL set: ``limit`` only says
        how many of its cases to evaluate, so a run can be extended with a larger ``--limit`` in the same
        directory. ``digests`` caches the data files' hashes."""
        identity = {
            "model": self.model, "model_fingerprint": model_fingerprint(handle),
            "model_config": config_identity(handle), "model_preprocess": preprocess_identity(handle),
            "model_tokenizer": tokenizer_fingerprint(handle), "versions": code_versions(),
            "data": data.name, "data_fingerprint": data.fingerprint(digests), "data_cases": len(data),
            "data_class_names": list(data.class_names), "data_prompts": data.prompts_fingerprint(),
            "methods": list(self.methods), "metrics": list(self.metrics), "seed": self.seed, "examples": self.examples,
            "metric_options": {m: self.options_for(m) for m in self.metrics},
            "method_options": {m: dict(self.method_options.get(m, {})) for m in self.methods},
            # records computed by a version whose metrics returned other values cannot be mixed in
            "metric_outputs": {m: list(METRICS.get(m).outputs) for m in self.metrics},
            # both change the last digits (BLAS blocks other batch sizes and thread counts differently:
            # measured up to 1.1e-6 and 3e-4 relative), so a run keeps the ones it started with
            "batch_size": self.batch_size, "threads": torch.get_num_threads(),
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
    "model_fingerprint": "the model's weights", "model_config": "the model's config.json",
    "model_preprocess": "the model's preprocessing", "model_tokenizer": "the model's tokenizer",
    "versions": "the code's versions", "data_fingerprint": "the data's files or scenes",
    "data_class_names": "the class names", "data_prompts": "the prompt templates",
    "batch_size": "--batch-size", "threads": "--threads",
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


def _model_level(spec: Any) -> bool:
    """Whether the image's model-level record ('-') holds values of ``spec``: a model-level metric, or the
    chance level of a per-method one (``MetricSpec.chance``)."""
    return not spec.per_method or spec.chance is not None


def _in_record(spec: Any, method: str) -> bool:
    """Whether the record of ``method`` ('-': the image's model-level record) holds values of ``spec``."""
    return _model_level(spec) if method == "-" else spec.per_method


def case_seed(seed: int, case_id: str, metric: str) -> int:
    return zlib.crc32(f"{seed}|{case_id}|{metric}".encode())


def resolve_methods(names: Iterable[str], family: Family | None = None) -> list[str]:
    """The methods to evaluate (``all``: every image-side method that supports ``family``); a method without
    an image side, or that does not run on ``family``, is refused in one line."""
    names = list(names)
    if names == ["all"]:
        return [spec.name for spec in METHODS if spec.image is not None and (family is None or spec.supports(family.name))]
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
        raise EvaluationError(f"{', '.join(wrong)} cannot run on {family.name} models: {'; '.join(reasons)}. "
                              f"For {family.name}: {', '.join(allowed)}.")
    return names


# ---- one case ---------------------------------------------------------------------------------------
@dataclass
class PreparedCase:
    case_id: str
    label: int
    rgb: torch.Tensor  # (3, H, W) in [0, 255]
    pixels: torch.Tensor  # (1, 3, H, W) normalised
    mask: torch.Tensor | None
    ignore: torch.Tensor | None
    crop: Any  # PIL crop, for example overlays
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the original image (maps at image resolution)
    score_ctx: Context | None = None  # shared by the methods of the case: the unperturbed score is computed once


def prepare(handle: ClipHandle, item: LabelledImage) -> PreparedCase:
    """The scored crop and the masks in its coordinates."""
    crop = handle.preprocess.crop_image(item.image)
    array = np.asarray(crop, dtype=np.uint8)  # (H, W, 3)
    rgb = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32)  # (3, H, W)
    pixels = handle.preprocess.normalize(array)[None].to(device=handle.device, dtype=handle.dtype)  # (1, 3, H, W)
    mask = torch.from_numpy(aligned_mask(item.mask, handle.preprocess)) if item.mask is not None else None
    ignore = torch.from_numpy(aligned_mask(item.ignore, handle.preprocess)) if item.ignore is not None else None
    if mask is not None and not mask.any():
        logger.warning("case %s: the object lies outside the centre crop; localisation metrics skip it", item.case_id)
        mask = None
    return PreparedCase(item.case_id, item.label, rgb, pixels, mask, ignore, crop, image_size=item.image.size)


class Evaluator:
    """Runs one configuration on one model; ``run(data, out_dir)`` writes the records and the results."""

    def __init__(self, handle: ClipHandle, config: EvalConfig) -> None:
        self.handle = handle
        self.map_folder = None
        self.maps_out: Path | None = None  # set by _run_cases when config.save_maps
        if config.maps is not None:
            self.map_folder, methods = _maps_methods(config)
            config = replace(config, methods=methods)
        self.methods = resolve_methods(config.methods, handle.family) if self.map_folder is None else list(config.methods)
        self.metrics = [METRICS.get(name) for name in resolve_metrics(config.metrics, handle.family)]
        if self.map_folder is not None:
            recompute = [m.name for m in self.metrics if m.recomputes_map]
            if recompute:
                raise EvaluationError(f"--maps cannot score {', '.join(recompute)}: it recomputes the map with the "
                                      "method on other models; drop it from --metrics.")
        # 'all' is resolved once, so the run's identity names what was actually evaluated
        self.config = replace(config, methods=list(self.methods), metrics=[m.name for m in self.metrics])
        from faithclip.api import tower_layers

        # every option and value checked here, before a folder exists: a refused run leaves nothing behind
        for method, options in config.method_options.items():
            if method not in self.methods:
                raise EvaluationError(f"options given for method {method!r}, which is not among the methods evaluated.")
            check_options(method, [METHODS.get(method).image], options, spelled=lambda key, m=method: f"{m}.{key}",
                          layers=tower_layers(handle, "image"), error=EvaluationError)
        for metric, options in config.metric_options.items():
            if metric not in [spec.name for spec in self.metrics]:
                raise EvaluationError(f"options given for {metric!r}, which is not among the metrics evaluated.")
            spec = METRICS.get(metric)
            check_options(metric, [spec.plan if spec.plan is not None else spec.run], options,
                          spelled=lambda key, m=metric: f"{m}.{key}", error=EvaluationError)
        self.prompt_set: PromptSet | None = None
        self.all_texts: TextBatch | None = None

    # ---- model calls ------------------------------------------------------------------------------
    def _context(self, pixels: torch.Tensor, labels: list[int] | None, handle: ClipHandle | None = None) -> Context:
        """An image-side context over the given classes (all when ``labels`` is None), the family's default
        target (CLIP: cosine; SigLIP, classifiers: logit), with the classifier weights as the text embeddings."""
        prompt_set = self.prompt_set
        if labels is None:
            text, weights = self.all_texts, prompt_set.weights
        else:
            text, weights = prompt_set.text_batch(handle or self.handle, labels), prompt_set.weights[labels]
        text = replace(text, embeds=weights)  # the classifier weights stand for the prompts' embeddings
        handle = handle or self.handle
        return Context(handle=handle, side="image", pixels=pixels, text=text, target=handle.family.default_target())

    def explain(self, method: str, pixels: torch.Tensor, label: int, handle: ClipHandle | None = None) -> torch.Tensor:
        """The method's raw ``(gh, gw)`` map of ``label`` for one image, on ``handle`` (default: the model)."""
        from faithclip.api import run_method

        spec = METHODS.get(method)
        ctx = self._context(pixels, [label], handle)
        result = run_method(ctx.handle, ctx, spec, dict(self.config.method_options.get(method, {})))
        return result.maps[0, 0].detach().cpu()

    def run_case(self, prepared: PreparedCase, method: str | None, keep_map: bool,
                 deferred: list[tuple[dict[str, Any], str, Any]] | None = None) -> dict[str, Any]:
        """Metric values of one (case, method); ``method=None`` runs the model-level metrics. With
        ``deferred``, a metric that has a scoring plan is not run: ``(record, metric, plan)`` is appended
        for ``_score_together``, which fills in its value."""
        started = time.perf_counter()
        if prepared.score_ctx is None:
            prepared.score_ctx = self._context(prepared.pixels, None)
        score_ctx = prepared.score_ctx
        record: dict[str, Any] = {"case": prepared.case_id, "method": method or "-", "label": prepared.label,
                                  "values": {}, "curves": {}, "skipped": []}
        # the model-free level of a per-method metric, once per image in the '-' record
        chance = [m for m in self.metrics if m.per_method and m.chance is not None] if method is None else []
        if method is None:
            patch_map = torch.zeros(1, 1)
            metrics = [m for m in self.metrics if not m.per_method]
        elif self.map_folder is not None:
            patch_map = self.map_folder.patch_map(prepared.case_id, method, self.handle.preprocess, _grid(self.handle),
                                                  prepared.image_size).to(torch.float32)
            metrics = [m for m in self.metrics if m.per_method]
        else:
            patch_map = self.explain(method, prepared.pixels, prepared.label)
            metrics = [m for m in self.metrics if m.per_method]
            if self.maps_out is not None:
                from faithclip.data.maps import write_map

                write_map(self.maps_out, prepared.case_id, method, patch_map, "patch",
                          text=self.prompt_set.class_names[prepared.label] if self.prompt_set else None,
                          model=self.config.model)
            if keep_map:
                record["map"] = patch_map.double().tolist()
        case = MetricCase(
            score_ctx=score_ctx, rgb=prepared.rgb, patch_map=patch_map, label=prepared.label, seed=0,
            mask=prepared.mask, ignore=prepared.ignore,
            explain=(lambda h, m=method: self.explain(m, prepared.pixels, prepared.label, h)) if method else None,
        )
        for spec in metrics:
            if spec.needs_mask and prepared.mask is None:
                record["skipped"].append(spec.name)
                continue
            case.seed = case_seed(self.config.seed, prepared.case_id, spec.name)
            options = self.config.options_for(spec.name)
            if "batch_size" in _parameters(spec.run):
                options.setdefault("batch_size", self.config.batch_size)
            if deferred is not None and spec.plan is not None:
                deferred.append((record, spec.name, spec.plan(case, **options)))
                record["values"][spec.name] = None  # keeps the metrics' order; filled in by _score_together
                continue
            _store(record, spec.name, spec.run(case, **options))
        for spec in chance:
            if spec.needs_mask and prepared.mask is None:
                record["skipped"].append(spec.name)
                continue
            options = self.config.options_for(spec.name)
            options.pop("batch_size", None)
            _store(record, spec.name, spec.chance(case, **options))
        record["seconds"] = round(time.perf_counter() - started, 4)
        return record

    def _run_step(self, step: list[tuple[PreparedCase, list[str | None], bool]]) -> list[dict[str, Any]]:
        """The records of several images: maps one image at a time, then every perturbed image of every
        curve of the step scored together (``_score_together``)."""
        deferred: list[tuple[dict[str, Any], str, Any]] = []
        records = [self.run_case(prepared, job, keep, deferred) for prepared, jobs, keep in step for job in jobs]
        if deferred:
            self._score_together(deferred, step[0][0].score_ctx)
        return records

    def _score_together(self, deferred: list[tuple[dict[str, Any], str, Any]], score_ctx: Context) -> None:
        """Score the images of all ``deferred`` plans in forwards of exactly ``batch_size`` images (the last
        one padded with zero images, whose scores are dropped), then finish each plan into its record.

        Every forward has the same shape whatever the number of images per step, and a row's numbers
        depend on the forward's shape, not on which other rows share it (matrix products compute each
        row from that row alone; bit-identical on one processor kind, which the identity pins): so they do not depend on
        ``images_per_step``. Any context of the data set can score any image: all hold the same
        classifier weights."""
        size = self.config.batch_size
        family, model = self.handle.family, self.handle.model
        started = time.perf_counter()
        pieces: list[list[torch.Tensor]] = [[] for _ in deferred]
        buffer: list[torch.Tensor] = []
        owners: list[tuple[int, int]] = []  # (plan, rows) of each piece in the buffer

        def forward() -> None:
            pixels = torch.cat(buffer)  # (n, 3, H, W)
            rows = pixels.shape[0]
            if rows < size:
                pixels = torch.cat([pixels, pixels.new_zeros(size - rows, *pixels.shape[1:])])  # (size, 3, H, W)
            logits = family.class_logits(model, score_ctx.score_images(pixels, batch_size=size)[:rows])  # (n, K)
            offset = 0
            for plan, count in owners:
                pieces[plan].append(logits[offset:offset + count])
                offset += count
            buffer.clear()
            owners.clear()

        buffered = 0
        for plan_index, (_, _, plan) in enumerate(deferred):
            for batch in plan.batches:
                while batch.shape[0]:
                    take = min(size - buffered, batch.shape[0])
                    buffer.append(batch[:take])
                    owners.append((plan_index, take))
                    buffered, batch = buffered + take, batch[take:]
                    if buffered == size:
                        forward()
                        buffered = 0
        if buffered:
            forward()
        total = sum(plan.count for _, _, plan in deferred) or 1
        seconds = time.perf_counter() - started
        for plan_index, (record, name, plan) in enumerate(deferred):
            logits = torch.cat(pieces[plan_index]) if pieces[plan_index] else torch.empty(0, 0, device=self.handle.device)
            _store(record, name, plan.finish(logits))
            record["seconds"] = round(record["seconds"] + seconds * plan.count / total, 4)  # its share

    # ---- the run ----------------------------------------------------------------------------------
    def run(self, data: LabelledSet, out_dir: str | Path, progress: bool = True, report: bool = True,
            repair: bool = False, shard: Shard | None = None, sources: Sequence[str | Path] = (),
            compute: bool = True) -> dict[str, Any] | None:
        """Evaluate into ``out_dir`` (resuming what it holds). Everything that can refuse the run is checked
        before anything is written; a folder this call created is removed again if it fails before the
        first record. ``repair`` drops damaged lines of the record files so that their records are redone.

        ``shard``: compute only the cases this shard owns (``Shard.owns``), into its own record file,
        holding the folder lock shared with the other shards; returns ``None`` (the results are written
        by a run without ``shard``, or by ``merge``). ``sources``: other run folders of the same identity
        whose records are imported (``merge``). ``compute=False``: refuse, naming what is missing, instead
        of computing records no file holds (``merge``)."""
        out = Path(out_dir)
        limit = self.config.limit
        if limit is not None and limit > len(data):
            raise EvaluationError(
                f"limit {limit} is more than the {len(data)} cases of {data.name}; ask for at most {len(data)} "
                "(for --data shapes, --count sets how many scenes there are).")
        self.handle.family.check_class_names(self.handle.model, data.class_names)  # a classifier: its own classes
        unreadable = unreadable_words(self.handle, data.class_names)
        if unreadable:
            listed = "; ".join(f"{name!r} ({', '.join(words)})" for name, words in list(unreadable.items())[:5])
            more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
            raise EvaluationError(
                f"the model's tokenizer cannot read {len(unreadable)} of the {len(data.class_names)} class names of "
                f"{data.name}: it maps these words to its unknown token: {listed}{more}. Its zero-shot weights for "
                "them would be meaningless; use a model whose vocabulary holds them, or rename the classes.")
        digests = FileDigests(out / DIGESTS_NAME)
        identity = self.config.identity(self.handle, data, digests)
        sources = [Path(source) for source in sources if Path(source).resolve() != out.resolve()]
        for source in sources:  # every folder merged must hold records of exactly this run
            if not (source / "config.json").is_file():
                raise EvaluationError(f"{source} holds no evaluation run (no config.json); merge only folders "
                                      "written by faithclip evaluate with the same options.")
            self._check_identity(source, identity, digests)
        self._check_identity(out, identity, digests)  # before creating anything; again under the lock
        if compute and not (out / "config.json").exists():
            check_readable(data.limited(limit), shard)  # a corrupt image refuses the run before its folder exists
        created = _make_directories(out)
        # Shards share the folder lock (and each holds its own); a whole run or a merge holds it alone.
        locks = [RunLock(out, shared=shard is not None)]
        if shard is not None:
            locks.append(RunLock(out, name=shard.lock_name))
        locks += [RunLock(source) for source in sources]  # nothing may still be writing what is merged
        records: RecordFile | None = None
        try:
            for lock in locks:
                lock.acquire()
            if not create_once(out / "config.json", json.dumps(identity, indent=1).encode()):
                self._check_identity(out, identity, digests)  # another shard may have written it meanwhile
            digests.save()
            own = shard.records_name if shard is not None else RECORDS_NAME
            records = RecordFile(out / own, check=self._record_problem, repair=repair)
            done = set(records.done)
            for path in record_paths(out):
                if path.name == own:
                    continue
                if shard is not None:  # another shard's file, perhaps being appended to: read only
                    done |= finished_keys(path)
                else:  # under the exclusive lock every file is ours to check (and to repair)
                    done |= RecordFile(path, check=self._record_problem, repair=repair).done
            for source in sources:
                for path in record_paths(source):
                    for record in RecordFile(path, check=self._record_problem, repair=repair).read():
                        if (record["case"], record["method"]) not in done:
                            records.append(record)
                            done.add((record["case"], record["method"]))
                _copy_examples(source, out)
            cases = data.limited(limit)
            if not compute:
                self._refuse_missing(cases, done, out)
            self._run_cases(cases, out, records, done, shard, progress)
            if shard is not None:
                return None
            results = aggregate(self._all_records(out), self, cases, identity)
            results = write_outputs(results, out, report=report)
        except BaseException as error:
            if created and shard is None and (records is None or not records.done):
                _remove_created(out, created)  # an early failure leaves no folder behind (shards: others may use it)
            if isinstance(error, OutputError):  # disk full, quota, I/O error: every record written is whole
                raise OutputError(f"{error}. The records already computed are kept: once space is freed, run the "
                                  "same command again to resume.") from error
            raise
        finally:
            for lock in reversed(locks):
                lock.release()
        return results

    def merge(self, data: LabelledSet, out_dir: str | Path, sources: Sequence[str | Path] = (), progress: bool = True,
              report: bool = True, repair: bool = False) -> dict[str, Any]:
        """The results of a run computed in shards: the records of ``out_dir``'s shard files and of the
        ``sources`` folders (each checked against this run's identity, each locked), imported into
        ``out_dir``, aggregated exactly as a one-process run's. Computes nothing: a missing record is an error
        that names the shard to run again."""
        return self.run(data, out_dir, progress=progress, report=report, repair=repair, sources=sources, compute=False)

    def _jobs(self) -> list[str | None]:
        return ([None] if any(_model_level(m) for m in self.metrics) else []) + list(self.methods)

    def _refuse_missing(self, data: LabelledSet, done: set[tuple[str, str]], out: Path) -> None:
        missing = [(index, load.case_id, job or "-") for index, load in enumerate(data.cases) for job in self._jobs()
                   if (load.case_id, job or "-") not in done]
        if not missing:
            return
        counts = sorted({int(p.name.split("-of-")[1].split(".")[0]) for p in out.glob("records.shard-*-of-*.jsonl")})
        owners = ""
        if counts:
            count = counts[-1]
            shards = sorted({index % count for index, _, _ in missing})
            owners = (f"; with {count} shards they belong to shard{'s' * (len(shards) > 1)} "
                      f"{', '.join(f'{i}/{count}' for i in shards[:8])}{' ...' if len(shards) > 8 else ''}")
        example = ", ".join(f"{case} / {job}" for _, case, job in missing[:3])
        raise EvaluationError(
            f"cannot merge: {len(missing)} records are in none of the folders ({example}{' ...' if len(missing) > 3 else ''})"
            f"{owners}. Run those shards again (the same command with --shard I/N), then merge again.")

    def _all_records(self, out: Path) -> list[dict[str, Any]]:
        """Every record of the folder, one per (case, method), from its files in ``record_paths`` order."""
        records, seen = [], set()
        for path in record_paths(out):
            for record in RecordFile(path).read():
                key = (record["case"], record["method"])
                if key not in seen:
                    seen.add(key)
                    records.append(record)
        return records

    def _check_identity(self, out: Path, identity: dict[str, Any], digests: FileDigests) -> None:
        config_path = out / "config.json"
        if not config_path.exists():
            return
        previous = json.loads(config_path.read_text())
        changes = describe_changes(previous, identity)
        if changes:
            files = digests.changed()
            if files:
                changes.append(f"files changed since the run began: {', '.join(files[:3])}"
                               + (f" and {len(files) - 3} more" if len(files) > 3 else ""))
            raise EvaluationError(
                f"{out} holds a run with different settings: {'; '.join(changes)}. Resume with the same model, "
                "data and options, or pass a new --out directory."
            )

    def _record_problem(self, record: dict[str, Any]) -> str | None:
        """What a read-back record lacks for this run's metrics (``None``: nothing)."""
        method = record["method"]
        if method != "-" and method not in self.methods:
            return f"a record of method {method!r}, which this run does not evaluate"
        skipped = record.get("skipped") or []
        for spec in self.metrics:
            if not _in_record(spec, method) or spec.name in skipped:
                continue
            values = record["values"].get(spec.name)
            if not isinstance(values, dict) or not set(spec.outputs) <= set(values):
                return f"no values of {spec.name}"
            for output in spec.outputs:
                problem = value_problem(spec.name, output, values[output])
                if problem:
                    return problem
        return None

    def _run_cases(self, data: LabelledSet, out: Path, records: RecordFile, done: set[tuple[str, str]],
                   shard: Shard | None, progress: bool) -> None:
        """Compute and append every (case, job) of ``data`` that no record file holds (of ``shard``'s cases only)."""
        skipped_metrics = [m.name for m in self.metrics if m.needs_mask and not data.has_masks]
        if skipped_metrics:
            logger.warning("%s has no object masks; skipping %s", data.name, ", ".join(skipped_metrics))
        if self.map_folder is not None:
            missing = self.map_folder.missing([load.case_id for load in data.cases], self.methods)
            if missing:
                raise EvaluationError(f"{len(missing)} maps are missing from {self.map_folder.root} (e.g. "
                                      f"{', '.join(missing[:3])}.npz); write one per case and method, or pass --limit.")
        self.maps_out = out / "maps" if self.config.save_maps and self.map_folder is None else None
        self.prompt_set = build_prompt_set(self.handle, data.class_names, data.templates, data.prompts)
        self.all_texts = self.prompt_set.text_batch(self.handle)
        jobs = self._jobs()
        from faithclip.progress import Progress

        owned = [(index, load) for index, load in enumerate(data.cases) if shard is None or shard.owns(index)]
        # Estimated per method: a mean over mixed methods was 15x off (RISE's maps cost 100x the others').
        title = "evaluate" if shard is None else f"evaluate shard {shard}"
        bar = Progress(title, {job or "model": len(owned) for job in jobs}, enabled=progress)
        step: list[tuple[PreparedCase, list[str | None], bool]] = []

        def finish_step() -> None:
            for record in self._run_step(step):
                records.append(record)
                done.add((record["case"], record["method"]))
                job = None if record["method"] == "-" else record["method"]
                bar.step(job or "model", f"{record['case']} {job or 'model'}")
            step.clear()

        for index, load in owned:
            pending = [job for job in jobs if (load.case_id, job or "-") not in done]
            for job in jobs:
                if job not in pending:
                    bar.skip(job or "model")
            if not pending:
                continue  # finished before an interruption: not even loaded
            prepared = prepare(self.handle, load())
            keep = index < self.config.examples  # the position in the whole set: the same in every shard
            if keep:
                _save_example(out, prepared)
            bar.restart_clock()
            if self.config.images_per_step == 1:  # each record written as soon as it is computed
                for job in pending:
                    step.append((prepared, [job], keep))
                    finish_step()
                continue
            step.append((prepared, pending, keep))  # N images: their records are written when the step ends
            if len(step) == self.config.images_per_step:
                finish_step()
        if step:
            finish_step()
        bar.close()


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the cases at positions ``index, index + count, ...`` of the data set.
    Round-robin over positions: neighbouring images (often one class) spread over all shards, and a
    larger ``--limit`` only adds cases, never moves one to another shard."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise EvaluationError(f"--shard {text!r} must look like I/N with 0 <= I < N, e.g. --shard 0/4.")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise EvaluationError(f"--shard {text}: the index must be 0 to {shard.count - 1} for {shard.count} shards.")
        return shard

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    @property
    def records_name(self) -> str:
        return shard_records_name(self.index, self.count)

    @property
    def lock_name(self) -> str:
        return f"{LOCK_NAME}.shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _copy_examples(source: Path, out: Path) -> None:
    """The example crops a merged folder's shards saved, where ``out`` lacks them."""
    for image in sorted((source / "examples").glob("*.png")):
        if not (out / "examples" / image.name).exists():
            write_atomic(out / "examples" / image.name, image.read_bytes())


def check_readable(data: LabelledSet, shard: Shard | None = None) -> None:
    """Read every case of ``data`` (of ``shard``'s, when given) once, before a new run creates its folder:
    a corrupt or unreadable image is found before the first record, not after hours of them, and the
    fixed file is then part of the run's data fingerprint from the start. One line names the first bad
    file and how many there are."""
    if len(data) > 100:
        logger.info("reading the %d images of %s before the first record", len(data), data.name)
    problems = []
    for index, load in enumerate(data.cases):
        if shard is not None and not shard.owns(index):
            continue
        try:
            load()
        except FaithclipError as error:
            problems.append(str(error))
    if problems:
        more = f" (and {len(problems) - 1} more unreadable case{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise EvaluationError(f"{data.name}: {problems[0].rstrip('.')}{more}. Nothing was computed; fix or remove the file(s) "
                              "and run the same command again.")


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
        return (f"{metric}.{output} is {value}, outside its range "
                + (f"({low:g} or {high:g})" if whole else f"[{low:g}, {high:g}]"))
    return None


def _store(record: dict[str, Any], metric: str, value: Any) -> None:
    record["values"][metric] = value.values
    if value.curves:
        record["curves"][metric] = {name: [x, y] for name, (x, y) in value.curves.items()}
    if value.details:
        record.setdefault("details", {})[metric] = value.details


def _make_directories(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; return those this call created (deepest last)."""
    missing = [directory for directory in [*reversed(out.parents), out] if not directory.exists()]
    created = []
    for directory in missing:
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made by a concurrent run: not ours to remove
        except OSError as error:
            raise EvaluationError(f"cannot create output directory {directory}: {error.strerror}. "
                                  "Choose another --out.") from error
        created.append(directory)
    if not out.is_dir():
        raise EvaluationError(f"{out} exists and is not a directory. Choose another --out.")
    return created


def _remove_created(out: Path, created: list[Path]) -> None:
    """Remove what a failed run wrote into a folder it created, then the folders it created."""
    import shutil

    if out in created:
        shutil.rmtree(out, ignore_errors=True)
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty or already gone: someone else's now


def _grid(handle: ClipHandle) -> tuple[int, int]:
    """``(gh, gw)``: the patch grid over the model's crop."""
    return (handle.preprocess.crop_height // handle.patch_size, handle.preprocess.crop_width // handle.patch_size)


def _maps_methods(config: EvalConfig) -> tuple[Any, list[str]]:
    """The maps folder and the methods to score: those of its files (``--methods`` left at its default or
    ``all``), or the ones named, each of which must have files."""
    from faithclip.data.maps import MapFolder

    folder = MapFolder(config.maps)
    if list(config.methods) in (list(DEFAULT_METHODS), ["all"]):
        return folder, folder.methods
    absent = [m for m in config.methods if m not in folder.methods]
    if absent:
        raise EvaluationError(f"{folder.root} has no maps of {', '.join(absent)}; it holds {', '.join(folder.methods)}.")
    return folder, list(config.methods)


def _parameters(function: Any) -> set[str]:
    import inspect

    return set(inspect.signature(function).parameters)


def _save_example(out: Path, prepared: PreparedCase) -> None:
    import io

    buffer = io.BytesIO()
    prepared.crop.save(buffer, format="PNG")
    write_atomic(out / "examples" / f"{example_name(prepared.case_id)}.png", buffer.getvalue())


def example_name(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


# ---- aggregation ------------------------------------------------------------------------------------
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


def aggregate(records: list[dict[str, Any]], evaluator: Evaluator, data: LabelledSet,
              identity: dict[str, Any]) -> dict[str, Any]:
    import transformers

    case_ids = [load.case_id for load in data.cases]
    wanted = set(case_ids)
    records = [r for r in records if r["case"] in wanted]
    order = {case: i for i, case in enumerate(case_ids)}
    records.sort(key=lambda r: (order[r["case"]], r["method"]))
    seed = evaluator.config.seed
    aggregate_values: dict[str, dict[str, dict[str, Any]]] = {}
    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for method in ["-"] + evaluator.methods:
        mine = [r for r in records if r["method"] == method]
        if not mine:
            continue
        per_metric: dict[str, dict[str, Any]] = {}
        for spec in evaluator.metrics:
            if not _in_record(spec, method):
                continue
            outputs = per_metric.setdefault(spec.name, {})
            for output in spec.outputs:
                values = [r["values"][spec.name][output] for r in mine if spec.name in r["values"]]
                outputs[output] = mean_ci(values, seed)
            curve_sets = [r["curves"][spec.name] for r in mine if spec.name in r.get("curves", {})]
            if curve_sets:
                curves.setdefault(method, {})[spec.name] = {
                    name: {"x": curve_sets[0][name][0], "y": _nanmean([c[name][1] for c in curve_sets]),
                           "n": len(curve_sets), **curve_band([c[name][1] for c in curve_sets], seed)}
                    for name in curve_sets[0]
                }
        aggregate_values[method] = per_metric
    examples = []
    for case_id in case_ids[:evaluator.config.examples]:
        maps = {r["method"]: r["map"] for r in records if r["case"] == case_id and "map" in r}
        if maps:
            examples.append({"case": case_id, "image": f"examples/{example_name(case_id)}.png", "maps": maps})
    method_meta = []
    for name in evaluator.methods:
        if evaluator.map_folder is not None:
            method_meta.append({"name": name, "paper": f"precomputed maps ({evaluator.map_folder.root})", "options": {},
                                "defaults": {}, "modifies_model": False, "modifies_input": False})
            continue
        spec = METHODS.get(name)
        method_meta.append({"name": name, "paper": spec.paper,
                            "options": _jsonable(evaluator.config.method_options.get(name, {})),
                            "defaults": _jsonable(spec.defaults),
                            "modifies_model": spec.modifies_model, "modifies_input": spec.modifies_input})
    metric_meta = []
    for spec in evaluator.metrics:
        chosen = _jsonable(evaluator.config.options_for(spec.name))
        chosen.pop("batch_size", None)  # does not change the numbers
        # A non-default option changes the protocol, so it becomes part of every label of the metric.
        protocol = spec.protocol_label(chosen)
        metric_meta.append({
            "name": spec.name, "category": spec.category, "higher_is_better": spec.higher_is_better,
            "protocol": protocol, "paper": spec.paper, "summary": spec.summary, "per_method": spec.per_method,
            "options": {**_jsonable(spec.defaults), **chosen},
            "columns": {output: f"{spec.outputs[output]} [{protocol}]" for output in spec.outputs},
            "chance": (spec.chance_label or spec.name) if spec.chance is not None else None,
        })
    prompt_set = evaluator.prompt_set
    return {
        "schema": SCHEMA,
        "faithclip_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "model": {"id": evaluator.config.model, "name": evaluator.handle.name,
                  "fingerprint": identity["model_fingerprint"],
                  "image_size": evaluator.handle.image_size, "patch_size": evaluator.handle.patch_size},
        "data": {"name": data.name, "num_cases": len(data), "num_classes": len(data.class_names),
                 "has_masks": data.has_masks,
                 "prompts": "own prompts" if data.prompts is not None else f"{len(prompt_set.templates)} templates"},
        "seed": seed,
        "limit": evaluator.config.limit,
        "seeds": {"deletion_colours": "crc32(f'{seed}|{case}|{metric}')", "bootstrap": seed},
        "confidence_interval": f"95% bootstrap percentile, {CI_RESAMPLES} resamples over images",
        "config": identity,
        "methods": method_meta,
        "metrics": metric_meta,
        "aggregate": aggregate_values,
        "curves": curves,
        "examples": examples,
        "per_image": records,
        "complete": len(records) == len(case_ids) * len(evaluator._jobs()),
    }


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
            means[start:start + size] = (weights @ defined) / (weights @ finite)
    with warnings.catch_warnings():  # a point no resample defines is all-NaN: it gets None below
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(means, 2.5, axis=0)
        high = np.nanpercentile(means, 97.5, axis=0)
    return {"low": [float(v) if ok and np.isfinite(v) else None for v, ok in zip(low, counts_ok)],
            "high": [float(v) if ok and np.isfinite(v) else None for v, ok in zip(high, counts_ok)]}


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


def evaluate(handle: ClipHandle, data: LabelledSet, out_dir: str | Path, config: EvalConfig | None = None,
             progress: bool = True, report: bool = True, repair: bool = False,
             shard: Shard | None = None) -> dict[str, Any] | None:
    """Evaluate ``config.methods`` with ``config.metrics`` on ``data``; see the module docstring. With
    ``shard``, only that shard's records (returns ``None``; ``merge`` then writes the results)."""
    config = config or EvalConfig(model=handle.name, data=data.name)
    return Evaluator(handle, config).run(data, out_dir, progress=progress, report=report, repair=repair, shard=shard)


def merge(handle: ClipHandle, data: LabelledSet, out_dir: str | Path, sources: Sequence[str | Path] = (),
          config: EvalConfig | None = None, progress: bool = True, report: bool = True,
          repair: bool = False) -> dict[str, Any]:
    """The results of a sharded run (``Evaluator.merge``)."""
    config = config or EvalConfig(model=handle.name, data=data.name)
    return Evaluator(handle, config).merge(data, out_dir, sources, progress=progress, report=report, repair=repair)


def evaluate_maps(model: ClipHandle, maps: str | Path, out: str | Path, data: str = "shapes",
                  metrics: Sequence[str] | None = None, methods: Sequence[str] | None = None, count: int = 100,
                  limit: int | None = None, seed: int = 0, progress: bool = False, **options: Any) -> dict:
    """Score precomputed maps (``maps``: a folder of ``<case>__<method>.npy/.npz``, format in docs/interop.md)
    on ``data`` (``"shapes"``, ``"voc:PATH"``, ``"imagenet:PATH"``) with ``metrics`` (default: evaluate's;
    metrics that recompute maps are refused), writing a run into ``out`` as ``faithclip evaluate --maps``
    does; returns the results. ``options``: further ``EvalConfig`` fields (``batch_size``, ``metric_options``)."""
    from faithclip.data.folders import open_data

    config = EvalConfig(model=model.name, data=data, methods=list(methods or DEFAULT_METHODS),
                        metrics=list(metrics or DEFAULT_METRICS), limit=limit, seed=seed, maps=str(maps), **options)
    evaluator = Evaluator(model, config)
    labelled = open_data(data, image_size=model.preprocess.size, count=count)
    return evaluator.run(labelled, out, progress=progress)


__all__ = ["EvalConfig", "Evaluator", "Shard", "evaluate", "evaluate_maps", "merge", "EvaluationError", "describe_changes", "model_fingerprint"]
