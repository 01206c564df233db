"""The one code path of the audit: ``run_audit(handle, settings)``.

``faithclip audit``, the demo's audit section and the docs generator (``faithclip.cli.audit_docs``) all
call ``run_audit`` with an ``AuditSettings``; the CLI's defaults ARE ``AuditSettings()``'s, and
``settings.command()`` is the ``faithclip audit ...`` line that reproduces a result, so a documented
table can always name the command that regenerates it.

Data (shapes scenes rendered at ``raw_size``, default 2x the model's input), for ``seed`` s:
single-object scenes of scene seed s + 1 (departure, accuracy per rung, correctness split) and
multi-object scenes of scene seed s + 2 (pointing per rung); the ladder's re-initialised copy is
seeded with s. The bootstrap has its own seed (``bootstrap_seed``), fixed by default.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from faithclip.audit.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Bootstrap
from faithclip.audit.departure import AuditData, audit_departure
from faithclip.audit.ladder import (
    DEFAULT_ALPHAS,
    LadderConfig,
    correctness_split,
    degrade,
    performance_ladder,
)
from faithclip.errors import FaithclipError
from faithclip.models.clip import ClipHandle

logger = logging.getLogger(__name__)

# The largest size the seeds study in docs/audit.md could run for seeds 0, 1 and 2 (about 10 CPU-minutes
# per seed); the P2 verdicts still differ between seeds there, for the reasons docs/audit.md gives.
DEFAULT_POINTING_SCENES = 192


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides an audit's numbers (the model and image files aside)."""

    scenes: int = 200  # single-object scenes: departure, accuracy per rung, correctness split
    raw_size: int | None = None  # scene render size; None = 2x the model's input
    aspect: float = 1.0  # height / width of the renders (a crop)
    map_images: int = 16
    deletion_steps: int | None = None  # departure curves; None = one point per patch
    ladder: bool = False
    correctness: bool = False
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    pointing_scenes: int = DEFAULT_POINTING_SCENES
    ladder_deletion_steps: int = 16  # P2 curves
    # The trained shapes model classifies all 200 scenes right (no wrong group to compare with); the ladder's
    # alpha = 0.5 rung errs on about 60 %: that is where right and wrong can be compared.
    correctness_alphas: tuple[float, ...] = (0.5,)
    methods: tuple[str, ...] | None = None  # P2 methods; None = all but rise, m2ib, occlusion
    flag_below: float = 0.5
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    bootstrap_seed: int = 0
    seed: int = 0

    def bootstrap(self) -> Bootstrap:
        return Bootstrap(self.resamples, self.confidence, self.bootstrap_seed)

    def validate(self) -> None:
        """Raise a ``FaithclipError`` naming the first setting a run could not use."""
        positive = ("scenes", "pointing_scenes", "ladder_deletion_steps", "resamples")
        for name in positive:
            if getattr(self, name) < 1:
                raise FaithclipError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.map_images < 0 or (self.deletion_steps is not None and self.deletion_steps < 1):
            raise FaithclipError("--map-images must be >= 0 and --deletion-steps >= 1.")
        if not 0 < self.aspect <= 1:
            raise FaithclipError(f"--aspect must be in (0, 1], got {self.aspect}.")
        if not 0 < self.confidence < 1:
            raise FaithclipError(f"--confidence must be in (0, 1), got {self.confidence}.")
        for alpha in (*self.alphas, *self.correctness_alphas):
            if not 0 <= alpha <= 1:
                raise FaithclipError(f"ladder rungs must lie in [0, 1], got {alpha}.")
        if self.ladder and len(self.alphas) < 3:
            raise FaithclipError("--alphas needs at least 3 rungs for a rank correlation.")
        if self.methods is not None:
            import faithclip.methods  # noqa: F401  (registers the methods)
            from faithclip.registry import METHODS

            for name in self.methods:
                if METHODS.get(name).image is None:  # an unknown name raises a MethodError naming the choices
                    raise FaithclipError(f"--methods {name}: it has no image side, and P2 explains images.")

    def command(self, prefix: str = "faithclip audit") -> str:
        """The command line that runs these settings (only non-default values are spelled out)."""
        default = AuditSettings()
        parts = [prefix]
        for field in fields(self):
            value, base = getattr(self, field.name), getattr(default, field.name)
            if value == base:
                continue
            flag = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag)
            elif isinstance(value, tuple):
                parts.append(flag + " " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
            else:
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(parts)


POINTING_BLOCK = 8  # pointing scenes are drawn in blocks: a larger --pointing-scenes extends a smaller one


def pointing_scenes(n: int, raw_size: int, seed: int) -> AuditData:
    """``n`` multi-object scenes drawn in blocks of ``POINTING_BLOCK`` (block b has scene seed
    ``seed * 100_000 + b``), so the first n scenes of a larger set are the set of size n: the seeds study
    reads its smaller sizes as prefixes of one run, and they equal what ``--pointing-scenes n`` computes."""
    from faithclip.audit.data import shapes_data

    blocks = [shapes_data(POINTING_BLOCK, raw_size=raw_size, seed=seed * 100_000 + b, kind="multi")
              for b in range(-(-n // POINTING_BLOCK))]
    return AuditData(images=[i for b in blocks for i in b.images][:n], prompts=blocks[0].prompts,
                     labels=[i for b in blocks for i in b.labels][:n], masks=[i for b in blocks for i in b.masks][:n],
                     name=f"shapes multi-object scenes rendered at {raw_size}x{raw_size} (seed {seed}, blocks of "
                          f"{POINTING_BLOCK})")


def shapes_inputs(handle: ClipHandle, settings: AuditSettings) -> tuple[AuditData, AuditData]:
    """Single-object scenes (scene seed s + 1) and multi-object pointing scenes (scene seed s + 2)."""
    from faithclip.audit.data import shapes_data

    raw = settings.raw_size or 2 * handle.image_size
    single = shapes_data(settings.scenes, raw_size=raw, seed=settings.seed + 1, aspect=settings.aspect)
    return single, pointing_scenes(settings.pointing_scenes, raw, settings.seed + 2)


def no_pipeline(handle: ClipHandle) -> str:
    return f"no published Grad-ECLIP pipeline exists for {handle.family.name} models"


def run_audit(handle: ClipHandle, settings: AuditSettings = AuditSettings(), data: AuditData | None = None,
              **departure_options: Any) -> dict[str, Any]:
    """The departure of the official pipeline, and P2 when ``settings.ladder`` / ``settings.correctness``.

    ``data`` replaces the shapes scenes for the departure (image files); P2 needs the labelled scenes with
    masks, so it refuses unlabelled data. ``departure_options`` pass through to ``audit_departure``.
    """
    settings.validate()
    if data is not None and (settings.ladder or settings.correctness) and (data.labels is None or data.masks is None):
        raise FaithclipError("the ladder and --correctness need labelled scenes with masks: run without --images.")
    single, multi = shapes_inputs(handle, settings) if data is None else (data, None)
    from faithclip.registry import METHODS

    if METHODS.get("grad_eclip_official").supports(handle.family.name):
        results = audit_departure(handle, single, map_images=settings.map_images,
                                  deletion_steps=settings.deletion_steps, **departure_options)
    elif settings.ladder or settings.correctness:  # P2 still applies; there is no published pipeline to compare
        results = {"data": single.name, "model": handle.name, "images": len(single.images),
                   "prompts": len(single.prompts), "departure_skipped": no_pipeline(handle)}
    else:
        raise FaithclipError(f"{no_pipeline(handle)}: nothing to audit; --ladder and --correctness measure "
                             "principle P2 on it.")
    methods = list(settings.methods) if settings.methods is not None else None
    if settings.ladder:
        if multi is None:
            _, multi = shapes_inputs(handle, settings)
        config = LadderConfig(alphas=tuple(settings.alphas), seed=settings.seed,
                              deletion_steps=settings.ladder_deletion_steps, flag_below=settings.flag_below,
                              bootstrap=settings.bootstrap())
        results["ladder"] = performance_ladder(handle, single, multi, methods, config)
    if settings.correctness:
        results["correctness"] = []
        for alpha in settings.correctness_alphas:
            rung = degrade(handle, alpha, settings.seed)
            split = correctness_split(rung, single, methods, settings.ladder_deletion_steps, settings.bootstrap())
            results["correctness"].append({"alpha": alpha, **split})
    results["settings"] = asdict(settings)
    results["command"] = settings.command()
    return results


__all__ = ["DEFAULT_POINTING_SCENES", "POINTING_BLOCK", "AuditSettings", "pointing_scenes", "run_audit", "shapes_inputs"]
