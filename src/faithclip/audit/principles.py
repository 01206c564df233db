"""The two principles of "Debunking Grad-ECLIP" (arXiv 2605.12952) as checks any method passes through.

P1 -- explain the original model, on the input it predicted from. Every method declares
``modifies_model`` / ``modifies_input`` (``faithclip.registry.MethodSpec``), and every explanation
records the score it explained (``score``) next to the model's own score for the same pair under its
standard preprocessing (``model_score``). ``check_p1`` runs each method on given pairs and fails it when

    |score - model_score|  >  rtol[dtype] * max(|score|, |model_score|, 1)

for any pair, with the reason (declared or undeclared departure): the explained score and the model's own
are two forwards (another batch, grad mode on), so they agree to float rounding, not to the bit.
``rtol`` is the project's one rounding bound per dtype (``faithclip.numerics.ROUNDING_RTOL``: 1e-12
float64, 1e-5 float32, 6e-2 bfloat16, 1e-2 float16; docs/testing.md). ``p1_gap``, the relative
``|score - model_score| / |model_score|``, is reported as the size of a departure.

P2 -- an explanation must track the model's actual performance: see ``faithclip.audit.ladder``
(quality along a ladder of degraded models, and split by right / wrong predictions).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from faithclip.errors import FaithclipError
from faithclip.methods.context import Context
from faithclip.models.clip import ImageInput, ModelHandle
from faithclip.numerics import rounding_rtol
from faithclip.registry import METHODS, MethodSpec
from faithclip.verdicts import p1_verdict

logger = logging.getLogger(__name__)


def p1_tolerance(dtype: torch.dtype) -> float:
    """The P1 bound for a model in ``dtype``: the project's rounding bound (``faithclip.numerics``).
    The declared departures measured on the shipped model stay at 0.1-1.5, four orders above it."""
    return rounding_rtol(dtype)


@dataclass
class P1Row:
    method: str
    side: str
    pairs: int
    max_gap: float | None  # largest relative |score - model_score| / |model_score| over the pairs
    passed: bool
    modifies_model: bool
    modifies_input: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def p1_gaps(scores: torch.Tensor, model_scores: torch.Tensor) -> torch.Tensor:
    """Relative gaps ``|s - m| / max(|m|, 1e-12)``, elementwise: the size of a departure, as reported."""
    scores, model_scores = scores.detach().double().cpu(), model_scores.detach().double().cpu()
    return (scores - model_scores).abs() / model_scores.abs().clamp_min(1e-12)


def explains_own_scores(scores: torch.Tensor, model_scores: torch.Tensor, tol: float) -> bool:
    """P1 on the scores: every pair within ``tol * max(|s|, |m|, 1)`` of the model's own (rounding only)."""
    scores, model_scores = scores.detach().double().cpu(), model_scores.detach().double().cpu()
    unit = torch.maximum(torch.maximum(scores.abs(), model_scores.abs()), torch.ones_like(scores))
    return bool(((scores - model_scores).abs() <= tol * unit).all())


def _reason(spec: MethodSpec, gap: float, passed: bool) -> str:
    declared = [flag for flag in ("modifies_model", "modifies_input") if getattr(spec, flag)]
    if not passed:
        if declared:
            return (
                f"explains a score {gap:.2e} (relative) away from the model's own; declared "
                f"{' and '.join(declared)}: it explains a different forward or input"
            )
        return (
            f"explains a score {gap:.2e} (relative) away from the model's own WITHOUT declaring "
            "modifies_model / modifies_input: fix the method or its declaration"
        )
    if declared:
        return f"scores agree to rounding (gap {gap:.1e}) although the method declares {' and '.join(declared)}"
    return f"explains the model's own score (equal to rounding, gap {gap:.1e})"


def check_p1(
    model: ModelHandle,
    images: ImageInput | Sequence[ImageInput],
    texts: str | Sequence[str] | torch.Tensor,
    methods: Sequence[str | MethodSpec] | None = None,
    *,
    sides: Sequence[str] | None = None,
    tol: float | None = None,
    options: dict[str, dict] | None = None,
) -> list[P1Row]:
    """P1 for every method (registered names or ``MethodSpec`` objects; default: all registered that support
    the model's family) and side (default: every side the family has), on the family's default score.

    Each method runs on every (image, text) pair with the model's standard inputs (``options`` may give
    per-method keyword options). A method that raises a faithclip error is reported as failed with
    its message; other exceptions propagate.
    """
    import faithclip.methods  # noqa: F401  (registers the methods; imported here to avoid an import cycle)
    from faithclip.api import family_target

    tol = p1_tolerance(model.dtype) if tol is None else tol
    family = model.family
    names = methods if methods is not None else [s.name for s in METHODS if s.supports(family.name)]
    specs = [METHODS.get(m) if isinstance(m, str) else m for m in names]
    sides = [side for side in (("image", "text") if sides is None else sides) if family.has_side(side)]
    target = family_target(model, None)
    pixels = model.pixels(images)
    batch = model.tokens(texts)
    rows = []
    for spec in specs:
        for side in sides:
            runner = getattr(spec, side)
            if runner is None:
                continue
            ctx = Context(handle=model, side=side, pixels=pixels, text=batch, target=target)
            base = dict(spec_flags(spec))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = runner(ctx, **(options or {}).get(spec.name, {}))
            except FaithclipError as error:
                rows.append(P1Row(spec.name, side, 0, None, False, **base, reason=f"could not run: {error}"))
                continue
            # The model's own scores from a fresh context: nothing the method ran (or cached) can touch them.
            own = Context(handle=model, side=side, pixels=pixels, text=batch, target=target).model_scores()
            gaps = p1_gaps(result.scores, own)
            gap, passed = float(gaps.max()), explains_own_scores(result.scores, own, tol)
            rows.append(P1Row(spec.name, side, gaps.numel(), gap, passed, **base, reason=_reason(spec, gap, passed)))
            logger.debug("P1 %s/%s: max gap %.3e", spec.name, side, gap)
    return rows


def spec_flags(spec: MethodSpec) -> dict[str, bool]:
    return {"modifies_model": bool(spec.modifies_model), "modifies_input": bool(spec.modifies_input)}


def format_p1(rows: Sequence[P1Row]) -> str:
    """A terminal table of P1 rows."""
    header = f"{'method':<22} {'side':<6} {'pairs':>5} {'max gap':>10} {'P1':<16} reason"
    lines = [header, "-" * len(header)]
    for r in rows:
        gap = "n/a" if r.max_gap is None else f"{r.max_gap:.2e}"
        declared = r.modifies_model or r.modifies_input
        verdict = p1_verdict(r.passed, declared)
        lines.append(f"{r.method:<22} {r.side:<6} {r.pairs:>5} {gap:>10} {verdict:<16} {r.reason}")
    return "\n".join(lines)


__all__ = ["P1Row", "p1_tolerance", "check_p1", "explains_own_scores", "p1_gaps", "format_p1"]
