"""The evaluation runner (``runner.py``), its run folder (``rundir.py``) and its torchrun ranks
(``distributed.py``), one package."""

from faithclip.evaluation.runner import (CI_RESAMPLES, DEFAULT_METHODS, DEFAULT_METRICS, OUTPUT_RANGES, SCHEMA,
                                         EvalConfig, EvaluationError, Evaluator, Shard, curve_band,
                                         describe_changes, evaluate, evaluate_maps, merge, model_fingerprint, prepare)

__all__ = ["EvalConfig", "Evaluator", "Shard", "evaluate", "evaluate_maps", "merge", "EvaluationError", "describe_changes",
           "model_fingerprint", "DEFAULT_METHODS", "DEFAULT_METRICS", "OUTPUT_RANGES", "SCHEMA", "CI_RESAMPLES",
           "curve_band", "prepare"]
