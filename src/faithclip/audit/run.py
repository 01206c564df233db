"""The one code path of the audit: ``run_audit(handle, settings)``.

``faithclip audit``, the demo's audit section and the docs generator (``tools/audit_docs.py``) all
call ``run_audit`` with an ``AuditSettings``; the CLI's defaults ARE ``AuditSettings()``'s, and
``settings.command()`` is the ``faithclip audit ...`` line that reproduces a result, so a documented
table can always name the command that regenerates it.

Data (shapes scenes rendered at ``raw_size``, default 2x the model's input), for ``seed`` s:
single-object scenes of scene seed s + 1 (departure, correctness split, whose rung's re-initialised copy
is seeded with s). P2 (``--ladder``, ``faithclip.audit.p2``): scene pairs of scene seed s + 2 at the model's
input size, ladders re-initialised with seeds 3s, 3s + 1, ... (disjoint across s). The bootstraps and
permutations have their own seed (``bootstrap_seed``), fixed by default.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from faithclip.audit.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Bootstrap
from faithclip.audit.departure import AuditData, audit_departure
from faithclip.audit.ladder import correctness_split, degrade
from faithclip.audit.p2 import MIN_EFFECT, P2Design
from faithclip.errors import FaithclipError
from faithclip.models.clip import ModelHandle

logger = logging.getLogger(__name__)


def _help(text: str) -> dict[str, str]:
    """A settings field's metadata: the help of its ``faithclip audit`` option."""
    return {"help": text}


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides an audit's numbers (the model and image files aside)."""

    # Each field is a ``faithclip audit`` option (``--scenes`` for ``scenes``): its help is the field's metadata,
    # and ``faithclip.cli.audit`` builds the parser and the conversion back from these fields (one source).
    scenes: int = field(
        default=200, metadata=_help("single-object shapes scenes (departure, accuracy per rung, correctness split)")
    )
    raw_size: int | None = field(default=None, metadata=_help("scene render size (default: 2x the model's input)"))
    aspect: float = field(default=1.0, metadata=_help("height / width of the scene renders (the model's crop cuts it)"))
    # 64 keeps the AUC contrasts' intervals readable (~4 CPU-min on shapes-clip)
    map_images: int = field(
        default=64, metadata=_help("images whose maps are compared (the first N of the scenes or --images)")
    )
    deletion_steps: int | None = field(
        default=None, metadata=_help("points per departure deletion curve (default: one per patch)")
    )
    ladder: bool = field(
        default=False, metadata=_help("P2: do the maps track the model? (paired test over degraded models, docs/p2.md)")
    )
    correctness: bool = field(default=False, metadata=_help("P2 (b): map quality split by right / wrong predictions"))
    p2_scenes: int = field(default=P2Design().scenes, metadata=_help("P2 scene pairs (the same at every rung)"))
    p2_ladders: int = field(default=P2Design().ladders, metadata=_help("P2 ladders (re-initialisation seeds)"))
    p2_rungs: int = field(
        default=P2Design().rungs, metadata=_help("P2 rungs per ladder, from the trained model to the first at chance")
    )
    min_effect: float = field(
        default=MIN_EFFECT,
        metadata=_help("P2's pre-registered minimum within-scene association, in (0, 1) (docs/p2.md)"),
    )
    ladder_deletion_steps: int = field(default=16, metadata=_help("points per deletion curve of the correctness split"))
    # The trained shapes model classifies all 200 scenes right (no wrong group to compare with); the ladder's
    # alpha = 0.5 rung errs on about 60 %: that is where right and wrong can be compared.
    correctness_alphas: tuple[float, ...] = field(
        default=(0.5,),
        metadata=_help(
            "comma-separated ladder rungs whose predictions are split (default 0.5: the trained model is almost "
            "never wrong)"
        ),
    )
    methods: tuple[str, ...] | None = field(
        default=None, metadata=_help("comma-separated methods for P2 (default: all but rise, m2ib, occlusion)")
    )
    resamples: int = field(default=DEFAULT_RESAMPLES, metadata=_help("bootstrap resamples (and P2's permutations)"))
    confidence: float = field(
        default=DEFAULT_CONFIDENCE, metadata=_help("level of every bootstrap interval, in (0, 1)")
    )
    bootstrap_seed: int = field(
        default=0,
        metadata=_help("seed of the bootstrap resamples and permutations (fixed, so a rerun prints the same bounds)"),
    )
    seed: int = field(
        default=0,
        metadata=_help("scene seeds seed+1 (single) and seed+2 (P2 pairs); P2 ladders seeded 3 seed, 3 seed + 1, ..."),
    )
    # (method, ((key, value), ...)) pairs: hashable, as the settings are frozen
    method_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = field(
        default=(),
        metadata={
            **_help(
                "a P2 method's option, METHOD.KEY=VALUE, e.g. rise.masks=500 (repeatable; values read as JSON when "
                "they parse)"
            ),
            "option": "--method-option",
        },
    )

    def options(self) -> dict[str, dict[str, Any]]:
        """``method_options`` as ``{method: {key: value}}``."""
        return {name: dict(pairs) for name, pairs in self.method_options}

    def bootstrap(self) -> Bootstrap:
        return Bootstrap(self.resamples, self.confidence, self.bootstrap_seed)

    def p2_design(self) -> P2Design:
        """P2's design for this seed: scene pairs of seed s + 2, ladders seeded 3s, 3s + 1, ..."""
        return P2Design(
            scenes=self.p2_scenes,
            ladders=self.p2_ladders,
            rungs=self.p2_rungs,
            min_effect=self.min_effect,
            resamples=self.resamples,
            permutations=self.resamples,
            scene_seed=self.seed + 2,
            ladder_seed=3 * self.seed,
            bootstrap_seed=self.bootstrap_seed,
        )

    def validate(self) -> None:
        """Raise a ``FaithclipError`` naming the first setting a run could not use."""
        positive = ("scenes", "p2_ladders", "ladder_deletion_steps", "resamples")
        for name in positive:
            if getattr(self, name) < 1:
                raise FaithclipError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.map_images < 0 or (self.deletion_steps is not None and self.deletion_steps < 1):
            raise FaithclipError("--map-images must be >= 0 and --deletion-steps >= 1.")
        if not 0 < self.aspect <= 1:
            raise FaithclipError(f"--aspect must be in (0, 1], got {self.aspect}.")
        if not 0 < self.confidence < 1:
            raise FaithclipError(f"--confidence must be in (0, 1), got {self.confidence}.")
        for alpha in self.correctness_alphas:
            if not 0 <= alpha <= 1:
                raise FaithclipError(f"ladder rungs must lie in [0, 1], got {alpha}.")
        if self.p2_scenes < 2 or self.p2_rungs < 3:
            raise FaithclipError("--p2-scenes must be at least 2 and --p2-rungs at least 3.")
        if not 0 < self.min_effect < 1:
            raise FaithclipError(f"--min-effect must be in (0, 1), got {self.min_effect}.")
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
        for setting in fields(self):
            value, base = getattr(self, setting.name), getattr(default, setting.name)
            if value == base:
                continue
            flag = setting.metadata.get("option", "--" + setting.name.replace("_", "-"))
            if setting.name == "method_options":
                parts += [
                    f"{flag} {name}.{key}=" + (v if isinstance(v, str) else json.dumps(v))
                    for name, pairs in value
                    for key, v in pairs
                ]
            elif isinstance(value, bool):
                parts.append(flag)
            elif isinstance(value, tuple):
                parts.append(flag + " " + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
            else:
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(parts)


def check_method_options(handle: ModelHandle, settings: AuditSettings) -> None:
    """Every ``--method-option`` names a method P2 runs, and a key and value it takes (before any work)."""
    if not settings.method_options:
        return
    import faithclip.methods  # noqa: F401  (registers the methods)
    from faithclip.api import tower_layers
    from faithclip.audit.ladder import default_methods, method_name
    from faithclip.errors import MethodError
    from faithclip.registry import check_method_options

    run = [method_name(m) for m in (settings.methods or default_methods(handle.family.name))]
    among = "P2, with --ladder or --correctness: "
    if not (settings.ladder or settings.correctness):  # P2 runs no method without them: every option is refused
        name = next(iter(settings.options()))
        raise MethodError(
            f"--method-option {name}.*: options given for method {name!r}, which is not among the methods run "
            f"({among}{', '.join(run)})."
        )
    check_method_options(settings.options(), run, "image", tower_layers(handle, "image"), among)


def shapes_inputs(handle: ModelHandle, settings: AuditSettings) -> AuditData:
    """Single-object scenes (scene seed s + 1)."""
    from faithclip.audit.data import shapes_data

    raw = settings.raw_size or 2 * handle.image_size
    return shapes_data(settings.scenes, raw_size=raw, seed=settings.seed + 1, aspect=settings.aspect)


def no_pipeline(handle: ModelHandle) -> str:
    return f"no published Grad-ECLIP pipeline exists for {handle.family.name} models"


def run_audit(
    handle: ModelHandle,
    settings: AuditSettings = AuditSettings(),
    data: AuditData | None = None,
    **departure_options: Any,
) -> dict[str, Any]:
    """The departure of the official pipeline, and P2 when ``settings.ladder`` / ``settings.correctness``.

    ``data`` replaces the shapes scenes for the departure (image files); P2 needs the labelled scenes with
    masks, so it refuses unlabelled data. ``departure_options`` pass through to ``audit_departure``.
    """
    settings.validate()
    check_method_options(handle, settings)
    if data is not None and (settings.ladder or settings.correctness) and (data.labels is None or data.masks is None):
        raise FaithclipError("the ladder and --correctness need labelled scenes with masks: run without --images.")
    single = shapes_inputs(handle, settings) if data is None else data
    from faithclip.registry import METHODS

    if METHODS.get("grad_eclip_official").supports(handle.family.name):
        results = audit_departure(
            handle,
            single,
            map_images=settings.map_images,
            deletion_steps=settings.deletion_steps,
            boot=settings.bootstrap(),
            **departure_options,
        )
    elif settings.ladder or settings.correctness:  # P2 still applies; there is no published pipeline to compare
        results = {
            "data": single.name,
            "model": handle.name,
            "images": len(single.images),
            "prompts": len(single.prompts),
            "departure_skipped": no_pipeline(handle),
        }
    else:
        raise FaithclipError(
            f"{no_pipeline(handle)}: nothing to audit; --ladder and --correctness measure principle P2 on it."
        )
    methods = list(settings.methods) if settings.methods is not None else None
    options = settings.options()
    if settings.ladder:
        from faithclip.audit.ladder import default_methods
        from faithclip.audit.p2 import p2_test

        results["p2"] = p2_test(
            handle, methods or default_methods(handle.family.name), settings.p2_design(), options, progress=logger.info
        )
    if settings.correctness:
        results["correctness"] = []
        for alpha in settings.correctness_alphas:
            rung = degrade(handle, alpha, settings.seed)
            split = correctness_split(
                rung,
                single,
                methods,
                settings.ladder_deletion_steps,
                settings.bootstrap(),
                options,
                permutations=settings.resamples,
            )
            results["correctness"].append({"alpha": alpha, **split})
    results["settings"] = asdict(settings)
    results["command"] = settings.command()
    return results


__all__ = ["AuditSettings", "run_audit", "shapes_inputs"]
