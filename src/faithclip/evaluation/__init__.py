"""The evaluation runner: methods x metrics over a labelled image set, resumable and reproducible.

For every case (image, label) the runner builds the scored image (the model's standard preprocessing),
aligns the object mask to it, runs each method on the model's own forward for the label's classifier
weight (the family's default target: CLIP's and BLIP's cosine, SigLIP's logit, a classifier's class logit;
``Family.class_weights``, ``class_logits`` and ``label_probability`` say what the metrics read), and runs
each metric. One JSON line per finished (case, method) is appended to ``records.jsonl`` and flushed to disk
before the next is computed, so an interrupted run resumes where it stopped: finished records are read
back, never recomputed. ``config.json`` pins everything the records' numbers depend on (model weights,
configuration, preprocessing and tokenizer; code versions; the data's bytes, class names and prompts;
methods, metrics, options, seed, batch size, threads); a resumed run with anything different is refused
with a message naming what changed. Random draws (deletion colours) are seeded from ``(seed, case,
metric)``, so the same seed gives the same numbers, in any order and after any interruption. One run at a
time holds the folder (``rundir.RunLock``). ``results.json`` (strict JSON, schema
``report/results.schema.json``), ``results.md`` and ``report.html`` are rendered from the records at the
end and published together (``rundir.write_result_set``).

Many processes: ``Shard(i, n)`` computes the cases at positions ``i, i + n, ...`` into its own
``records.shard-i-of-n.jsonl``; a run without a shard, or ``Evaluator.merge`` (which computes nothing),
reads every record file, checks each line, and aggregates exactly as one process would. A record's
numbers do not depend on the process that computed it: the identity pins the batch size, the thread
count, the device kind and dtype and the processor (a CPU's name and instruction set, a GPU's name: another
kind runs other kernels, whose results agree to float rounding only), and nothing else of a process enters
a record (seeds are per case and metric). ``shards.ProcessGroup`` runs the shards under torch.distributed.

From the command to the results (``cli/evaluate.py``: ``Evaluator(handle, config).run(data, out)``), each
step in one module, in this order:

1. ``config.py``, nothing written yet: the settings (``EvalConfig``) resolved (``all``, the methods of
   ``--maps``) and every option checked (``Evaluator.__init__``); in ``run``, the data checked against the
   model, the run's identity computed and compared with ``out``'s and every merged folder's
   ``config.json``, and a new run's images read once (``check_readable``).
2. ``shards.py``, the folder: made, locked, ``config.json`` written once for all the run's processes, the
   record files opened (this process's checked, the other shards' read), a merge's folders imported, a
   merge that lacks a record refused.
3. ``cases.py``, the records: each case not yet recorded prepared, its maps computed and its metrics run
   (``Evaluator._run_cases`` and ``run_case``, the runner's own loop); ``streaming.py``: the curves'
   perturbed images of consecutive records scored in full forwards (``ForwardStream``), each record appended
   to this process's file once its last forward has run.
4. ``results.py``, the results: every record read back (``rundir.read_records``), aggregated
   (``aggregate``: means, bootstrap intervals, mean curves and bands, the methods and metrics described)
   and written (``write_outputs``: ``results.json``, and ``results.md`` and ``report.html`` rendered by
   ``report/evaluation_report.py``, published as one set).

``runner.py`` (``Evaluator.run``) calls these steps in this order; before them, the command asks
``shards.py`` whether torchrun started it (its rank's device) and parses ``--shard``. Two modules lie beneath them:
``records.py`` says what a record holds (the jobs of a case, which record holds which metric, what makes
a read-back record damaged) and ``rundir.py`` keeps the folder's files (locks, record files, the published
result set).
"""

from faithclip.evaluation.cases import PreparedCase, case_seed, example_name, prepare
from faithclip.evaluation.config import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    EvalConfig,
    EvaluationError,
    check_readable,
    describe_changes,
    resolve_methods,
    resolve_metrics,
)
from faithclip.evaluation.records import OUTPUT_RANGES, case_jobs, value_problem
from faithclip.evaluation.results import CI_RESAMPLES, SCHEMA, aggregate, curve_band, mean_ci, write_outputs
from faithclip.evaluation.runner import Evaluator, evaluate, evaluate_maps, merge
from faithclip.evaluation.shards import Shard
from faithclip.models.fingerprint import model_fingerprint

__all__ = [
    "EvalConfig",
    "Evaluator",
    "Shard",
    "evaluate",
    "evaluate_maps",
    "merge",
    "EvaluationError",
    "describe_changes",
    "model_fingerprint",
    "DEFAULT_METHODS",
    "DEFAULT_METRICS",
    "OUTPUT_RANGES",
    "SCHEMA",
    "CI_RESAMPLES",
    "PreparedCase",
    "prepare",
    "case_seed",
    "example_name",
    "check_readable",
    "resolve_methods",
    "resolve_metrics",
    "case_jobs",
    "value_problem",
    "aggregate",
    "curve_band",
    "mean_ci",
    "write_outputs",
]
