"""``faithclip check``: the two principles as a diagnostic anyone can point at any explanation method.

A method is a registered name, a plugin's (``faithclip.methods`` entry points), or a plain callable
``module:function`` (``faithclip.methods.external``). Every check ends in ``pass``, ``fail`` or
``inconclusive`` with its evidence (and interval where one is estimated):

P1 (per side)   ``faithclip.audit.detect.Recorder`` watches the model while the method explains 2 multi-object
                shapes scenes rendered at 2x (methods that read the original image get it) against the prompts of
                their named objects. A departure the method does not declare fails; one it declares is a
                ``declared departure`` (it explains another model, and says so; not a fail, as in verify and the
                demo); an unverifiable recomputation is inconclusive. The score
                the method reports must be the model's own (relative gap <= 1e-5) when it reports one.
claims          the method's declared ``modifies_model`` / ``modifies_input`` against what was detected: an
                undeclared departure fails; a declared departure that was not seen is inconclusive.
P2 ladder       ``faithclip.audit.p2.p2_test``: do the method's maps track the model? The paired within-scene test
                over degraded models (docs/p2.md), primary pair (the model's reliance on the named object, its share
                of the score drops from erasing each object, vs the map's mass on it): ``tracks`` passes,
                ``does not track`` fails. Holm runs over the
                methods of one ``faithclip check`` run (``holm_across_cards``).
P2 correctness  ``correctness_split`` on the alpha = 0.5 rung: pointing on right minus wrong images, tested within
                shape (permutation within shape).
sanity          cascading randomisation (``faithclip.metrics.sanity``) of the image tower on ``sanity_scenes``
                scenes: the mean Spearman rho between the original map and the map of the fully randomised
                model; fail when its interval lies above 0.5 (the map survives the model's destruction), pass
                when below.
text            text sensitivity: per scene, the maps for two prompts the model scores differently (cosines more
                than 0.02 apart); maps are identical when their relative L2 distance is <= 1e-6. Fail when the
                interval of the fraction of identical pairs lies above 0.5 (the map ignores the text), pass when
                below.

The check's sizes are small so it runs on every method in minutes on a CPU (``CheckSettings()``; RISE with
256 masks, M2IB with 5 steps); ``CheckSettings.audit_sizes()`` uses the audit's documented sizes and the
methods' own defaults. Pairs, scenes and seeds are recorded.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from faithclip.audit.bootstrap import Bootstrap, mean_interval
from faithclip.audit.departure import AuditData
from faithclip.audit.detect import Finding, Recorder
from faithclip.audit.p2 import MIN_LADDERS, MIN_SCENES, P2Design
from faithclip.audit.principles import explains_own_scores, p1_gaps, p1_tolerance
from faithclip.errors import FaithclipError, MethodError
from faithclip.methods.context import Context
from faithclip.models.clip import ModelHandle
from faithclip.registry import METHODS, MethodSpec
from faithclip.verdicts import DECLARED_DEPARTURE, FAIL, VERDICTS

logger = logging.getLogger(__name__)

# "declared departure" (faithclip.verdicts): P1 only, every departure seen is one the method declares
# (modifies_model / modifies_input). One wording with verify and the demo; like them, check exits 1 on "fail"
# only (an undeclared departure is a fail, here and in "claims").
CHECKS = ("p1", "claims", "ladder", "correctness", "sanity", "text")
#: the settings each check reads (``CheckSettings.in_use``)
SETTINGS_OF_CHECK: dict[str, set[str]] = {
    "p1": {"p1_scenes"},
    "claims": {"p1_scenes"},
    "ladder": {"p2_scenes", "p2_ladders", "p2_rungs", "resamples"},
    "correctness": {"scenes", "correctness_alpha", "deletion_steps", "resamples"},
    "sanity": {"sanity_scenes", "resamples"},
    "text": {"text_scenes", "resamples"},
}
SANITY_THRESHOLD = 0.5
TEXT_MIN_SCORE_GAP = 0.02
IDENTICAL_MAPS = 1e-6
# Small settings of the expensive methods for the check (their defaults: RISE 4000 masks, M2IB 10 steps).
CHECK_OPTIONS = {"rise": {"masks": 256}, "m2ib": {"steps": 5}}


@dataclass(frozen=True)
class CheckSettings:
    checks: tuple[str, ...] = CHECKS
    p1_scenes: int = 2
    scenes: int = 64  # single-object scenes: the correctness split
    p2_scenes: int = MIN_SCENES  # the smallest P2 design offered a verdict (docs/p2.md)
    p2_ladders: int = MIN_LADDERS
    p2_rungs: int = P2Design().rungs
    correctness_alpha: float = 0.5
    deletion_steps: int = 8
    sanity_scenes: int = 8
    text_scenes: int = 8
    resamples: int = 1000
    method_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = tuple(
        (name, tuple(options.items())) for name, options in CHECK_OPTIONS.items()
    )
    seed: int = 0

    @classmethod
    def audit_sizes(cls, **changes: Any) -> "CheckSettings":
        """The audit's documented P2 sizes (docs/audit.md) and every method's own defaults."""
        from faithclip.audit.run import AuditSettings

        audit = AuditSettings()
        return replace(
            cls(
                scenes=audit.scenes,
                p2_scenes=audit.p2_scenes,
                p2_ladders=audit.p2_ladders,
                p2_rungs=audit.p2_rungs,
                deletion_steps=audit.ladder_deletion_steps,
                resamples=audit.resamples,
                method_options=(),
            ),
            **changes,
        )

    def options(self, name: str) -> dict[str, Any]:
        return dict(dict(self.method_options).get(name, ()))

    def in_use(self) -> dict[str, Any]:
        """The settings that the chosen ``checks`` read (the others change nothing), as a dict: what the check's
        record and page show, so a run of ``--checks p1,claims`` does not list the P2 ladder's sizes."""
        used = {"checks", "method_options", "seed"}.union(*(SETTINGS_OF_CHECK[check] for check in self.checks))
        return {key: value for key, value in asdict(self).items() if key in used}

    def bootstrap(self) -> Bootstrap:
        return Bootstrap(self.resamples, 0.95, 0)


@dataclass
class CheckResult:
    check: str
    verdict: str  # pass / fail / inconclusive
    evidence: str
    interval: list[float] | None = None
    details: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- which method -------------------------------------------------------------------------------
def resolve_method(reference: str) -> tuple[MethodSpec, str]:
    """A registered or plugin method by name, or a ``module:function`` callable; and how it was found."""
    import faithclip.methods  # noqa: F401  (registers the built-in methods and the plugins)
    from faithclip.methods.external import callable_method, import_callable

    if ":" in reference:
        return callable_method(import_callable(reference), reference), "callable"
    from faithclip.registry import PLUGIN_METHODS

    spec = METHODS.get(reference)  # an unknown name raises, listing the choices
    return spec, f"plugin ({PLUGIN_METHODS[reference]})" if reference in PLUGIN_METHODS else "registered"


# ---- data ---------------------------------------------------------------------------------------
def _multi(handle: ModelHandle, n: int, seed: int) -> AuditData:
    from faithclip.audit.data import shapes_data

    return shapes_data(n, raw_size=2 * handle.image_size, seed=seed, kind="multi")


def _named_prompts(data: AuditData) -> list[str]:
    return [data.prompts[label] for label in data.labels]


def _run(spec: MethodSpec, side: str, ctx: Context, options: dict) -> Any:
    extra = {"original": ctx.originals} if "original" in spec.defaults and side == "image" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(spec, side)(ctx, **extra, **options)


def scene_context(handle: ModelHandle, image: Any, prompts: list[str]) -> Context:
    """One scene's image-side context against ``prompts``, explaining the family's default score."""
    return Context(
        handle=handle,
        side="image",
        pixels=handle.pixels(image),
        text=handle.tokens(prompts),
        target=handle.family.default_target(),
        originals=[image],
    )


def image_map(handle: ModelHandle, spec: MethodSpec, image: Any, prompts: list[str], options: dict) -> torch.Tensor:
    """The method's image maps ``(K, gh, gw)`` for one scene against ``prompts``, on the model's crop grid."""
    from faithclip.audit.measures import crop_grid_map

    ctx = scene_context(handle, image, prompts)
    maps = _run(spec, "image", ctx, options).maps[0].detach()
    if tuple(maps.shape[-2:]) != ctx.grid:
        maps = torch.stack([crop_grid_map(m, image.size, handle.preprocess, ctx.grid) for m in maps])
    return maps.double()


# ---- P1 -----------------------------------------------------------------------------------------
def check_p1(
    handle: ModelHandle, spec: MethodSpec, side: str, settings: CheckSettings
) -> tuple[CheckResult, list[Finding]]:
    data = _multi(handle, settings.p1_scenes, settings.seed + 3)
    pixels, text = handle.pixels(data.images), handle.tokens(_named_prompts(data))
    ctx = Context(
        handle=handle,
        side=side,
        pixels=pixels,
        text=text,
        target=handle.family.default_target(),
        originals=list(data.images),
    )
    recorder = Recorder(handle.model, pixels, text.input_ids)
    recorder.reference(handle, text)
    try:
        with recorder:
            result = _run(spec, side, ctx, settings.options(spec.name))
    except FaithclipError as error:
        return CheckResult(f"P1 {side}", "inconclusive", f"the method could not run: {error}"), []
    if not bool(torch.isfinite(result.maps).all()):  # a NaN map explains nothing: never a pass
        bad = int((~torch.isfinite(result.maps)).flatten(2).any(-1).sum())
        return CheckResult(
            f"P1 {side}",
            "fail",
            f"{bad} of {result.maps.shape[0] * result.maps.shape[1]} maps hold "
            "NaN or infinite values: they explain nothing",
        ), []
    findings = recorder.findings()
    if result.options.get("scores_reported", True):
        own = Context(
            handle=handle, side=side, pixels=pixels, text=text, target=handle.family.default_target()
        ).model_scores()
        gap = float(p1_gaps(result.scores, own).max())
        if not explains_own_scores(result.scores, own, p1_tolerance(handle.dtype)):
            findings.insert(
                0,
                Finding(
                    "score_gap",
                    "scores",
                    f"explains scores {gap:.3g} (relative) away from the model's own",
                    "departure",
                    "score",
                ),
            )

    def short(where: str) -> str:
        parts = where.split(", ")
        return where if len(parts) <= 3 else f"{', '.join(parts[:3])} and {len(parts) - 3} more"

    departures = [f for f in findings if f.severity == "departure"]
    unverified = [f for f in findings if f.severity == "unverified"]
    pairs = f"{pixels.shape[0]} x {text.input_ids.shape[0]} pairs"
    if departures:
        evidence = "; ".join(f"{f.kind} at {short(f.where)}" for f in departures)
        verdict = DECLARED_DEPARTURE if all(_declared(spec, f) for f in departures) else FAIL
    elif unverified:
        verdict, evidence = "inconclusive", "; ".join(f"{f.kind} at {short(f.where)}" for f in unverified)
    else:
        verdict, evidence = (
            "pass",
            "the model's own forward on its own input"
            + (f" (notes: {', '.join(sorted({f.kind for f in findings}))})" if findings else ""),
        )
    return CheckResult(
        f"P1 {side}",
        verdict,
        f"{evidence} [{pairs}, tol {recorder.tol:g}]",
        details={"findings": [f.as_dict() for f in findings]},
    ), findings


def _declared(spec: MethodSpec, finding: Finding) -> bool:
    """Whether the method declares the kind of departure ``finding`` is: a changed model or forward
    (``modifies_model``), a changed input (``modifies_input``); a score that is not the model's own follows
    from either."""
    if finding.category == "model":
        return bool(spec.modifies_model)
    if finding.category == "input":
        return bool(spec.modifies_input)
    return bool(spec.modifies_model or spec.modifies_input)


def check_claims(spec: MethodSpec, findings: list[Finding]) -> CheckResult:
    """The declared flags as claims: each compared with what the detectors saw."""
    detected = {
        "model": any(f.category == "model" and f.severity == "departure" for f in findings),
        "input": any(f.category == "input" and f.kind != "equivalent_inputs" for f in findings),
    }
    departed_input = any(f.category == "input" and f.severity == "departure" for f in findings)
    declared = {"model": bool(spec.modifies_model), "input": bool(spec.modifies_input)}
    parts, verdict = [], "pass"
    for category in ("model", "input"):
        flag = f"modifies_{category}"
        undeclared = (detected["model"] if category == "model" else departed_input) and not declared[category]
        if undeclared:
            parts.append(f"{flag} NOT declared but detected")
            verdict = "fail"
        elif declared[category] and detected[category]:
            parts.append(f"{flag} declared, detected")
        elif declared[category]:
            parts.append(f"{flag} declared, not detected")
            verdict = "inconclusive" if verdict == "pass" else verdict
        elif detected[category]:
            parts.append(f"{flag} not declared; perturbation queries seen (not a departure)")
        else:
            parts.append(f"{flag} not declared, not detected")
    return CheckResult("claims", verdict, "; ".join(parts), details={"declared": declared, "detected": detected})


# ---- P2 -----------------------------------------------------------------------------------------
def _verdict(audit_verdict: str) -> str:
    return {"flagged": "fail", "pass": "pass"}.get(audit_verdict, "inconclusive")


P2_CHECK_VERDICT = {"tracks": "pass", "does not track": "fail", "inconclusive": "inconclusive"}


def check_ladder(handle: ModelHandle, spec: MethodSpec, settings: CheckSettings) -> CheckResult:
    from faithclip.audit.p2 import P2Design, p2_test

    design = P2Design(
        scenes=settings.p2_scenes,
        ladders=settings.p2_ladders,
        rungs=settings.p2_rungs,
        resamples=settings.resamples,
        permutations=settings.resamples,
        scene_seed=settings.seed + 2,
        ladder_seed=3 * settings.seed,
    )
    result = p2_test(handle, [spec], design, {spec.name: settings.options(spec.name)})
    return _p2_card(result, spec.name)


def _p2_card(result: dict[str, Any], name: str) -> CheckResult:
    entry = result["primary"]["methods"][name]
    d = result["design"]
    contrast = "; ".join(
        f"{row['pointing'][0]:.2f} -> {row['pointing'][1]:.2f} (McNemar p {row['p_mcnemar']:.2g})"
        for row in result["contrast"][name]
        if row["rung"] is not None
    )
    evidence = (
        f"within-scene r(model's reliance on the named object, map's mass on it; {d.get('association', 'linear')}) "
        f"= {entry['r']:.2f}, p tracks "
        f"{entry['p_tracks_holm']:.2g}, p below {d['min_effect']:g} {entry['p_below_holm']:.2g} (Holm)"
        + (f"; {entry['reason']}" if entry["reason"] else "")
        + (f"; pointing trained -> degraded {contrast}" if contrast else "")
        + f" [{d['scenes']} scenes x {d['ladders']} ladders x {d['rungs']} rungs]"
    )
    details = {k: v for k, v in result.items() if k != "per_scene"}
    return CheckResult(
        "P2 ladder", P2_CHECK_VERDICT[entry["verdict"]], evidence, [entry["low"], entry["high"]], details=details
    )


def holm_across_cards(cards: list[dict[str, Any]]) -> list[str]:
    """Holm over the P2 ladder p-values of every card of one run (in place); the methods whose verdict changed."""
    from faithclip.audit.p2 import p2_verdicts
    from faithclip.audit.p2stats import WithinTest

    found = {}
    for card in cards:
        for check in card["checks"]:
            if check["check"] == "P2 ladder" and check.get("details"):
                found[card["method"]] = check
    if len(found) < 2:
        return []
    tests = {}
    for name, check in found.items():
        entry = check["details"]["primary"]["methods"][name]
        tests[name] = WithinTest(**{k: entry[k] for k in WithinTest.__dataclass_fields__})
    design = next(iter(found.values()))["details"]["design"]
    adjusted = p2_verdicts(tests, design["min_effect"], design["alpha"])
    changed = []
    for card in cards:
        if card["method"] not in found:
            continue
        check = found[card["method"]]
        check["details"]["primary"]["methods"][card["method"]].update(adjusted[card["method"]])
        verdict = P2_CHECK_VERDICT[adjusted[card["method"]]["verdict"]]
        if verdict != check["verdict"]:
            changed.append(card["method"])
            check["verdict"] = verdict
            check["evidence"] += f" (Holm over the {len(found)} methods of this run)"
        card["failed"] = any(c["verdict"] == "fail" for c in card["checks"])
    return changed


def check_correctness(handle: ModelHandle, spec: MethodSpec, settings: CheckSettings) -> CheckResult:
    from faithclip.audit.ladder import correctness_split, degrade
    from faithclip.audit.run import AuditSettings, shapes_inputs

    single = shapes_inputs(handle, AuditSettings(scenes=settings.scenes, seed=settings.seed))
    rung = degrade(handle, settings.correctness_alpha, settings.seed)
    split = correctness_split(
        rung,
        single,
        [spec],
        settings.deletion_steps,
        settings.bootstrap(),
        {spec.name: settings.options(spec.name)},
        permutations=settings.resamples,
    )
    entry = split["methods"][spec.name]
    interval = entry["pointing_difference_interval"]
    groups = f"{split['right']} right, {split['wrong']} wrong at alpha={settings.correctness_alpha:g}"
    if entry["verdict"] == "n/a":
        return CheckResult(
            "P2 correctness",
            "inconclusive",
            f"too few images in a group ({groups}; needs {split['min_group']} each)",
            interval,
        )
    return CheckResult(
        "P2 correctness",
        _verdict(entry["verdict"]),
        f"pointing right - wrong = {entry['pointing_difference']:+.2f}, within shape "
        f"{entry['pointing_within_shape']:+.2f} (permutation within shape) ({groups})",
        interval,
        details={k: v for k, v in split.items() if k != "per_scene"},
    )


def check_sanity(handle: ModelHandle, spec: MethodSpec, settings: CheckSettings) -> CheckResult:
    from faithclip.metrics.sanity import cascading_randomisation

    data = _multi(handle, settings.sanity_scenes, settings.seed + 4)
    options = settings.options(spec.name)
    finals, curves = [], []
    for index, (image, prompt) in enumerate(zip(data.images, _named_prompts(data))):

        def explain(h: ModelHandle) -> torch.Tensor:
            return image_map(h, spec, image, [prompt], options)[0]

        steps, rhos = cascading_randomisation(handle, explain, seed=settings.seed + index)
        rhos = [0.0 if math.isnan(r) else r for r in rhos]  # a constant map after randomisation kept nothing
        finals.append(rhos[-1])
        curves.append(rhos)
    stats = mean_interval(np.asarray(finals), settings.bootstrap())
    low, high = stats["low"], stats["high"]
    verdict = "fail" if low > SANITY_THRESHOLD else "pass" if high < SANITY_THRESHOLD else "inconclusive"
    return CheckResult(
        "sanity",
        verdict,
        f"Spearman rho(original map, map of the fully randomised image tower) = "
        f"{stats['value']:.2f} (fails above {SANITY_THRESHOLD:g}) [{len(finals)} scenes]",
        [low, high],
        details={"steps": steps, "curves": curves},
    )


def check_text(handle: ModelHandle, spec: MethodSpec, settings: CheckSettings) -> CheckResult:
    data = _multi(handle, settings.text_scenes, settings.seed + 5)
    options = settings.options(spec.name)
    identical, distances, skipped = [], [], 0
    for image, label in zip(data.images, data.labels):
        prompts = [data.prompts[label], data.prompts[(label + len(data.prompts) // 2) % len(data.prompts)]]
        scores = scene_context(handle, image, prompts).model_scores()[0]
        maps = image_map(handle, spec, image, prompts, options)  # (2, gh, gw)
        flat = maps.flatten(1)
        if abs(float(scores[0] - scores[1])) <= TEXT_MIN_SCORE_GAP or not bool((flat != flat[:, :1]).any()):
            skipped += 1  # the model does not tell the prompts apart, or both maps are constant: no evidence
            continue
        distance = float((flat[0] - flat[1]).norm() / flat.norm(dim=1).max().clamp_min(1e-300))
        distances.append(distance)
        identical.append(float(distance <= IDENTICAL_MAPS))
    if len(identical) < 3:
        return CheckResult(
            "text sensitivity", "inconclusive", f"only {len(identical)} usable scene(s) ({skipped} without evidence)"
        )
    stats = mean_interval(np.asarray(identical), settings.bootstrap())
    low, high = stats["low"], stats["high"]
    verdict = "fail" if low > 0.5 else "pass" if high < 0.5 else "inconclusive"
    return CheckResult(
        "text sensitivity",
        verdict,
        f"maps identical for {int(sum(identical))} of {len(identical)} prompt pairs the model scores "
        f"differently (median relative distance {float(np.median(distances)):.2g}); fails when most "
        "are identical",
        [low, high],
        details={"distances": distances, "skipped": skipped},
    )


# ---- the card -----------------------------------------------------------------------------------
def run_check(
    handle: ModelHandle,
    spec: MethodSpec,
    settings: CheckSettings = CheckSettings(),
    origin: str = "registered",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every check of ``settings.checks`` on one method: the verdict card as a JSON-ready dict."""
    unknown = sorted(set(settings.checks) - set(CHECKS))
    if unknown:
        raise FaithclipError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}.")
    spec.check_family(handle.family.name)  # a method the family does not run: one line, not an empty card
    start = time.perf_counter()
    results: list[CheckResult] = []
    findings: list[Finding] = []
    timings: dict[str, float] = {}

    def timed(name: str, run: Callable[[], Any]) -> Any:
        if progress:
            progress(f"{spec.name}: {name}")
        began = time.perf_counter()
        out = run()
        timings[name] = round(time.perf_counter() - began, 2)
        return out

    with torch.inference_mode(False):
        if "p1" in settings.checks or "claims" in settings.checks:
            for side in spec.sides_on(handle.family):
                result, seen = timed(f"P1 {side}", lambda: check_p1(handle, spec, side, settings))
                findings += seen
                if "p1" in settings.checks:
                    results.append(result)
            if "claims" in settings.checks:
                results.append(check_claims(spec, findings))
        runners = {"ladder": check_ladder, "correctness": check_correctness, "sanity": check_sanity, "text": check_text}
        for name, runner in runners.items():
            if name not in settings.checks:
                continue
            if spec.image is None:
                results.append(CheckResult(name, "inconclusive", "not run: the method has no image side"))
                continue
            try:
                results.append(timed(name, lambda: runner(handle, spec, settings)))
            except MethodError as error:
                results.append(CheckResult(name, "inconclusive", f"the method could not run: {error}"))
    return {
        "method": spec.name,
        "origin": origin,
        "paper": spec.paper,
        "declared": {"modifies_model": spec.modifies_model, "modifies_input": spec.modifies_input},
        "model": handle.name,
        "checks": [r.as_dict() for r in results],
        "failed": any(r.verdict == "fail" for r in results),
        "seconds": round(time.perf_counter() - start, 2),
        "seconds_per_check": timings,
    }


__all__ = [
    "CheckSettings",
    "CheckResult",
    "CHECKS",
    "CHECK_OPTIONS",
    "VERDICTS",
    "resolve_method",
    "run_check",
    "check_p1",
    "check_claims",
    "check_ladder",
    "holm_across_cards",
    "check_correctness",
    "check_sanity",
    "check_text",
    "image_map",
]
