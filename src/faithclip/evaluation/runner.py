"""The runner: ``Evaluator`` computes the records of one configuration on one model and hands them to the
aggregation; ``evaluate``, ``merge`` and ``evaluate_maps`` are its one-call forms. ``Evaluator.run`` is a
sequence of named steps, each in the module of its concern (the package docstring lists them)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from faithclip.data.digests import FileDigests
from faithclip.data.folders import LabelledSet
from faithclip.evaluation.cases import (
    PreparedCase,
    case_seed,
    parameters,
    patch_grid,
    prepare,
    save_example,
)
from faithclip.evaluation.config import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    DIGESTS_NAME,
    EvalConfig,
    EvaluationError,
    check_data,
    check_identity,
    check_merged,
    check_options_given,
    check_readable,
    maps_methods,
    resolve_methods,
    resolve_metrics,
)
from faithclip.evaluation.records import case_jobs, check_record, store
from faithclip.evaluation.results import aggregate, write_outputs
from faithclip.evaluation.rundir import RECORDS_NAME, RecordFile, read_records
from faithclip.evaluation.shards import (
    Shard,
    finished_elsewhere,
    import_sources,
    make_directories,
    refuse_missing,
    remove_created,
    run_locks,
    share_identity,
)
from faithclip.evaluation.streaming import Deferred, ForwardStream
from faithclip.files import OutputError
from faithclip.methods.context import Context
from faithclip.metrics import METRICS
from faithclip.metrics.case import MetricCase
from faithclip.metrics.zeroshot import PromptSet, build_prompt_set
from faithclip.models.clip import ModelHandle, TextBatch
from faithclip.registry import METHODS

logger = logging.getLogger(__name__)


class Evaluator:
    """Runs one configuration on one model; ``run(data, out_dir)`` writes the records and the results."""

    def __init__(self, handle: ModelHandle, config: EvalConfig) -> None:
        self.handle = handle
        self.map_folder = None
        self.maps_out: Path | None = None  # set by _start_cases when config.save_maps
        if config.maps is not None:
            self.map_folder, methods = maps_methods(config)
            config = replace(config, methods=methods)
        self.methods = (
            resolve_methods(config.methods, handle.family) if self.map_folder is None else list(config.methods)
        )
        self.metrics = [METRICS.get(name) for name in resolve_metrics(config.metrics, handle.family)]
        if self.map_folder is not None:
            recompute = [m.name for m in self.metrics if m.recomputes_map]
            if recompute:
                raise EvaluationError(
                    f"--maps cannot score {', '.join(recompute)}: it recomputes the map with the "
                    "method on other models; drop it from --metrics."
                )
        # 'all' is resolved once, so the run's identity names what was actually evaluated
        self.config = replace(config, methods=list(self.methods), metrics=[m.name for m in self.metrics])
        check_options_given(handle, self.config)  # before a folder exists: a refused run leaves nothing behind
        self.prompt_set: PromptSet | None = None
        self.all_texts: TextBatch | None = None

    @property
    def jobs(self) -> list[str | None]:
        """The records of every case (``records.case_jobs``): ``None`` (model-level), then each method."""
        return case_jobs(self.methods, self.metrics)

    def record_problem(self, record: dict[str, Any]) -> str | None:
        """What a read-back record lacks for this run (``records.check_record``; ``None``: nothing)."""
        return check_record(record, self.methods, self.metrics)

    # ---- model calls ------------------------------------------------------------------------------
    def _context(self, pixels: torch.Tensor, labels: list[int] | None, handle: ModelHandle | None = None) -> Context:
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

    def explain(self, method: str, pixels: torch.Tensor, label: int, handle: ModelHandle | None = None) -> torch.Tensor:
        """The method's raw ``(gh, gw)`` map of ``label`` for one image, on ``handle`` (default: the model)."""
        from faithclip.api import run_method

        spec = METHODS.get(method)
        ctx = self._context(pixels, [label], handle)
        result = run_method(ctx.handle, ctx, spec, dict(self.config.method_options.get(method, {})))
        return result.maps[0, 0].detach().cpu()

    def run_case(
        self,
        prepared: PreparedCase,
        method: str | None,
        keep_map: bool,
        deferred: Deferred | None = None,
    ) -> dict[str, Any]:
        """Metric values of one (case, method); ``method=None`` runs the model-level metrics. With
        ``deferred``, a metric that has a scoring plan is not run: ``(metric, plan)`` is appended for the
        ``ForwardStream``, which fills in its value."""
        started = time.perf_counter()
        if prepared.score_ctx is None:
            prepared.score_ctx = self._context(prepared.pixels, None)
        record: dict[str, Any] = {
            "case": prepared.case_id,
            "method": method or "-",
            "label": prepared.label,
            "values": {},
            "curves": {},
            "skipped": [],
        }
        if method is None:
            patch_map = torch.zeros(1, 1)
            metrics = [m for m in self.metrics if not m.per_method]
        else:
            patch_map = self._patch_map(prepared, method, keep_map, record)
            metrics = [m for m in self.metrics if m.per_method]
        case = MetricCase(
            score_ctx=prepared.score_ctx,
            rgb=prepared.rgb,
            patch_map=patch_map,
            label=prepared.label,
            seed=0,
            mask=prepared.mask,
            ignore=prepared.ignore,
            explain=(lambda h, m=method: self.explain(m, prepared.pixels, prepared.label, h)) if method else None,
        )
        for spec in metrics:
            if spec.needs_mask and prepared.mask is None:
                record["skipped"].append(spec.name)
                continue
            case.seed = case_seed(self.config.seed, prepared.case_id, spec.name)
            options = self.config.options_for(spec.name)
            if "batch_size" in parameters(spec.run):
                options.setdefault("batch_size", self.config.batch_size)
            if deferred is not None and spec.plan is not None:
                deferred.append((spec.name, spec.plan(case, **options)))
                record["values"][spec.name] = None  # keeps the metrics' order; filled in by the ForwardStream
                continue
            store(record, spec.name, spec.run(case, **options))
        if method is None:  # the model-free level of a per-method metric, once per image in the '-' record
            self._chance_levels(prepared, case, record)
        record["seconds"] = round(time.perf_counter() - started, 4)
        return record

    def _patch_map(self, prepared: PreparedCase, method: str, keep_map: bool, record: dict[str, Any]) -> torch.Tensor:
        """The ``(gh, gw)`` map the per-method metrics score: read from ``--maps``, or computed (then written
        to ``OUT/maps`` with ``--save-maps``, and kept in ``record`` for the report's examples)."""
        if self.map_folder is not None:
            return self.map_folder.patch_map(
                prepared.case_id, method, self.handle.preprocess, patch_grid(self.handle), prepared.image_size
            ).to(torch.float32)
        patch_map = self.explain(method, prepared.pixels, prepared.label)
        if self.maps_out is not None:
            from faithclip.data.maps import write_map

            write_map(
                self.maps_out,
                prepared.case_id,
                method,
                patch_map,
                "patch",
                text=self.prompt_set.class_names[prepared.label] if self.prompt_set else None,
                model=self.config.model,
            )
        if keep_map:
            record["map"] = patch_map.double().tolist()
        return patch_map

    def _chance_levels(self, prepared: PreparedCase, case: MetricCase, record: dict[str, Any]) -> None:
        """The model-free level of each per-method metric that has one (``MetricSpec.chance``)."""
        for spec in [m for m in self.metrics if m.per_method and m.chance is not None]:
            if spec.needs_mask and prepared.mask is None:
                record["skipped"].append(spec.name)
                continue
            options = self.config.options_for(spec.name)
            options.pop("batch_size", None)
            store(record, spec.name, spec.chance(case, **options))

    # ---- the run ----------------------------------------------------------------------------------
    def run(
        self,
        data: LabelledSet,
        out_dir: str | Path,
        progress: bool = True,
        report: bool = True,
        repair: bool = False,
        shard: Shard | None = None,
        sources: Sequence[str | Path] = (),
        compute: bool = True,
    ) -> dict[str, Any] | None:
        """Evaluate into ``out_dir`` (resuming what it holds). Everything that can refuse the run is checked
        before anything is written; a folder this call created is removed again if it fails before the
        first record. ``repair`` drops damaged lines of the record files so that their records are redone.

        ``shard``: compute only the cases this shard owns (``Shard.owns``), into its own record file,
        holding the folder lock shared with the other shards; returns ``None`` (the results are written
        by a run without ``shard``, or by ``merge``). ``sources``: other run folders of the same identity
        whose records are imported (``merge``). ``compute=False``: refuse, naming what is missing, instead
        of computing records no file holds (``merge``)."""
        out = Path(out_dir)
        sources = [Path(source) for source in sources if Path(source).resolve() != out.resolve()]
        identity, digests = self._refuse_early(data, out, sources)
        if compute and not (out / "config.json").exists():  # a corrupt image refuses the run before its folder exists
            check_readable(data.limited(self.config.limit), shard.owns if shard is not None else None)
        created = make_directories(out)
        locks = run_locks(out, shard, sources)
        records: RecordFile | None = None
        try:
            for lock in locks:
                lock.acquire()
            share_identity(out, identity, digests)
            records = RecordFile(
                out / (shard.records_name if shard is not None else RECORDS_NAME),
                check=self.record_problem,
                repair=repair,
            )
            done = finished_elsewhere(out, records, shard, self.record_problem, repair)
            import_sources(sources, out, records, done, self.record_problem, repair)
            cases = data.limited(self.config.limit)
            if not compute:
                refuse_missing(cases, self.jobs, done, out)
            self._run_cases(cases, out, records, done, shard, progress)
            if shard is not None:
                return None
            results = aggregate(read_records(out), self.config, cases, identity, self.handle, self.prompt_set)
            results = write_outputs(results, out, report=report)
        except BaseException as error:
            if created and shard is None and (records is None or not records.done):
                remove_created(out, created)  # an early failure leaves no folder behind (shards: others may use it)
            if isinstance(error, OutputError):  # disk full, quota, I/O error: every record written is whole
                raise OutputError(
                    f"{error}. The records already computed are kept: once space is freed, run the "
                    "same command again to resume."
                ) from error
            raise
        finally:
            for lock in reversed(locks):
                lock.release()
        return results

    def merge(
        self,
        data: LabelledSet,
        out_dir: str | Path,
        sources: Sequence[str | Path] = (),
        progress: bool = True,
        report: bool = True,
        repair: bool = False,
    ) -> dict[str, Any]:
        """The results of a run computed in shards: the records of ``out_dir``'s shard files and of the
        ``sources`` folders (each checked against this run's identity, each locked), imported into
        ``out_dir``, aggregated exactly as a one-process run's. Computes nothing: a missing record is an error
        that names the shard to run again."""
        return self.run(data, out_dir, progress=progress, report=report, repair=repair, sources=sources, compute=False)

    def _refuse_early(self, data: LabelledSet, out: Path, sources: list[Path]) -> tuple[dict[str, Any], FileDigests]:
        """The run's identity (and the data's file hashes), after every check that needs no folder: the data
        against the model, and the identity of ``out`` and of every folder merged (checked again under the
        lock)."""
        check_data(self.handle, data, self.config.limit)
        digests = FileDigests(out / DIGESTS_NAME)
        identity = self.config.identity(self.handle, data, digests)
        check_merged(sources, identity, digests)
        check_identity(out, identity, digests)  # before creating anything; again under the lock
        return identity, digests

    def _start_cases(self, data: LabelledSet, out: Path) -> None:
        """What every case of the run needs: the maps of ``--maps`` checked, the ``--save-maps`` folder, and
        the class prompts' texts and classifier weights."""
        skipped_metrics = [m.name for m in self.metrics if m.needs_mask and not data.has_masks]
        if skipped_metrics:
            logger.warning("%s has no object masks; skipping %s", data.name, ", ".join(skipped_metrics))
        if self.map_folder is not None:
            missing = self.map_folder.missing([load.case_id for load in data.cases], self.methods)
            if missing:
                raise EvaluationError(
                    f"{len(missing)} maps are missing from {self.map_folder.root} (e.g. "
                    f"{', '.join(missing[:3])}.npz); write one per case and method, or pass --limit."
                )
        self.maps_out = out / "maps" if self.config.save_maps and self.map_folder is None else None
        self.prompt_set = build_prompt_set(self.handle, data.class_names, data.templates, data.prompts)
        self.all_texts = self.prompt_set.text_batch(self.handle)

    def _run_cases(
        self,
        data: LabelledSet,
        out: Path,
        records: RecordFile,
        done: set[tuple[str, str]],
        shard: Shard | None,
        progress: bool,
    ) -> None:
        """Compute and append every (case, job) of ``data`` that no record file holds (of ``shard``'s cases only)."""
        self._start_cases(data, out)
        jobs = self.jobs
        from faithclip.progress import Progress

        owned = [(index, load) for index, load in enumerate(data.cases) if shard is None or shard.owns(index)]
        # Estimated per method: a mean over mixed methods was 15x off (RISE's maps cost 100x the others').
        title = "evaluate" if shard is None else f"evaluate shard {shard}"
        bar = Progress(title, {job or "model": len(owned) for job in jobs}, enabled=progress)

        def written(record: dict[str, Any]) -> None:
            records.append(record)
            done.add((record["case"], record["method"]))
            job = None if record["method"] == "-" else record["method"]
            bar.step(job or "model", f"{record['case']} {job or 'model'}")

        self._announce_cost([job for _, load in owned for job in jobs if (load.case_id, job or "-") not in done])
        # the perturbed images of consecutive records share full forwards; a record is written once its
        # last forward has run (an interruption loses the few records of the forward being filled)
        stream = ForwardStream(self.handle, self.config.batch_size, written)
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
                save_example(out, prepared)
            bar.restart_clock()
            for job in pending:
                deferred: Deferred = []
                record = self.run_case(prepared, job, keep, deferred)
                stream.add(record, deferred, prepared.score_ctx)
        stream.close()
        bar.close()

    def forward_seconds(self, size: int | None = None) -> float:
        """Seconds per image of a forward of ``size`` blank images on the run's scoring context
        (``cost.measure_forward``; its default size without one). The prompts must be encoded (``_start_cases``)."""
        from faithclip.evaluation import cost

        crop = (1, 3, self.handle.preprocess.crop_height, self.handle.preprocess.crop_width)
        blank = torch.zeros(crop, device=self.handle.device, dtype=self.handle.dtype)
        return cost.measure_forward(
            self._context(blank, None).score_images, self.handle, self.config.batch_size, size=size
        )

    def _announce_cost(self, pending: list[str | None]) -> None:
        """One line on stderr (a warning) before a run estimated to take ``cost.SLOW_SECONDS`` or more: the
        image forwards of the ``pending`` records (``cost.record_forwards``) at a measured forward's cost;
        a run of fewer than ``cost.FEW_FORWARDS`` forwards is not timed."""
        from collections import Counter

        from faithclip.evaluation import cost

        forwards: Counter[str] = Counter()
        for job in pending:
            forwards.update(
                cost.record_forwards(
                    job,
                    [m.name for m in self.metrics],
                    self.handle,
                    self.config.method_options.get(job, {}) if job else {},
                    self.config.metric_options,
                    maps=self.map_folder is None,
                )
            )
        if sum(forwards.values()) < cost.FEW_FORWARDS:
            return
        notice = cost.slow_run_notice(dict(forwards), self.forward_seconds(), len(pending))
        if notice:
            logger.warning(notice)


def evaluate(
    handle: ModelHandle,
    data: LabelledSet,
    out_dir: str | Path,
    config: EvalConfig | None = None,
    progress: bool = True,
    report: bool = True,
    repair: bool = False,
    shard: Shard | None = None,
) -> dict[str, Any] | None:
    """Evaluate ``config.methods`` with ``config.metrics`` on ``data``; see the module docstring. With
    ``shard``, only that shard's records (returns ``None``; ``merge`` then writes the results)."""
    config = config or EvalConfig(model=handle.name, data=data.name)
    return Evaluator(handle, config).run(data, out_dir, progress=progress, report=report, repair=repair, shard=shard)


def merge(
    handle: ModelHandle,
    data: LabelledSet,
    out_dir: str | Path,
    sources: Sequence[str | Path] = (),
    config: EvalConfig | None = None,
    progress: bool = True,
    report: bool = True,
    repair: bool = False,
) -> dict[str, Any]:
    """The results of a sharded run (``Evaluator.merge``)."""
    config = config or EvalConfig(model=handle.name, data=data.name)
    return Evaluator(handle, config).merge(data, out_dir, sources, progress=progress, report=report, repair=repair)


def evaluate_maps(
    model: ModelHandle,
    maps: str | Path,
    out: str | Path,
    data: str = "shapes",
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    count: int = 100,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> dict:
    """Score precomputed maps (``maps``: a folder of ``<case>__<method>.npy/.npz``, format in docs/interop.md)
    on ``data`` (``"shapes"``, ``"voc:PATH"``, ``"imagenet:PATH"``) with ``metrics`` (default: evaluate's;
    metrics that recompute maps are refused), writing a run into ``out`` as ``faithclip evaluate --maps``
    does; returns the results. ``options``: further ``EvalConfig`` fields (``batch_size``, ``metric_options``)."""
    from faithclip.data.folders import open_data

    config = EvalConfig(
        model=model.name,
        data=data,
        methods=list(methods or DEFAULT_METHODS),
        metrics=list(metrics or DEFAULT_METRICS),
        limit=limit,
        seed=seed,
        maps=str(maps),
        **options,
    )
    evaluator = Evaluator(model, config)
    labelled = open_data(data, image_size=model.preprocess.size, count=count)
    return evaluator.run(labelled, out, progress=progress)
