"""The public entry points: ``explain`` and ``explain_text`` (several images or texts are one batch: an
``Explanation`` per pair, image-major), and ``grad_eclip_official_explain`` (the published pipeline, one
original image at a time).

Inputs are turned into exactly what the model predicts from (its standard preprocessing, its
tokenizer), the method computes raw maps on the model's own forward, and every ``Explanation`` records
the score it explained next to the model's own score for the same pair (principle P1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import faithclip.methods  # noqa: F401  (registers the methods)
from faithclip.errors import ImageError, MethodError, ModelError, TextError
from faithclip.explanation import Explanation, map_warnings
from faithclip.methods.context import Context, MapResult
from faithclip.models.clip import ImageInput, ModelHandle, TextBatch, TextInput
from faithclip.models.images import to_rgb
from faithclip.registry import METHODS, MethodSpec
from faithclip.targets import Target


def explain(
    model: ModelHandle,
    image: ImageInput | Sequence[ImageInput],
    text: TextInput | Sequence[str] | TextBatch,
    method: str = "attention_eclip",
    *,
    target: str | Target | None = None,
    others: Sequence[str] = (),
    **options: Any,
) -> Explanation | list[Explanation]:
    """Image-side explanation(s): a ``(gh, gw)`` map on the patch grid per image-text pair.

    One image and one text give one ``Explanation``; several give a list ordered image-major
    (all texts of image 0, then image 1, ...). ``target`` is what is explained (``None``: the family's
    default, ``model.family.default_target_kind``: ``cosine`` for CLIP; ``logit``, ``probability`` with
    ``others`` the other prompts of the set, ``contrast`` with ``others`` the one contrasting text; BLIP's
    ``itm`` / ``itm_log_odds``, its image-text matching head, image side only; ``model.family.target_kinds``
    lists them). Method options are passed by keyword (``layers=2``: a count of
    last layers; ``layer=-1``: an index; ``faithclip methods`` lists each method's). ``text`` may be
    ``model.prompts(texts)``: prompts encoded once, reused for many images.
    """
    check_arguments(model, image, text, others)
    return _run(model, image, text, method, "image", family_target(model, target, others), options)


def explain_text(
    model: ModelHandle,
    image: ImageInput | Sequence[ImageInput],
    text: TextInput | Sequence[str],
    method: str = "attention_eclip",
    *,
    target: str | Target | None = None,
    others: Sequence[str] = (),
    **options: Any,
) -> Explanation | list[Explanation]:
    """Text-side explanation(s): an ``(L,)`` map over token positions per image-text pair."""
    check_arguments(model, image, text, others)
    return _run(model, image, text, method, "text", family_target(model, target, others), options)


def check_arguments(model: Any, image: Any, text: Any, others: Any = ()) -> None:
    """The arguments of ``explain`` / ``explain_text`` in the command line's words, before any work: a
    loaded model (not its name), at least one image and one text, ``others`` a list of texts (not one
    string, whose letters would be taken as texts) that does not repeat an explained text."""
    if not isinstance(model, ModelHandle):
        if isinstance(model, (str, Path)):
            raise ModelError(
                f"model must be a loaded model, not its name: model = faithclip.load({str(model)!r}), "
                "then faithclip.explain(model, ...)."
            )
        raise ModelError(
            f"model must be a faithclip model (faithclip.load(name) or faithclip.from_hf(model)); "
            f"got {type(model).__name__}."
        )
    if image is None or (isinstance(image, (list, tuple)) and not image):
        raise ImageError("no image given: pass a path, a PIL image, a pixel tensor, or a non-empty list of them.")
    if isinstance(image, torch.Tensor) and image.numel() == 0:
        raise ImageError(f"the pixel tensor is empty (shape {tuple(image.shape)}); pass at least one image.")
    if text is None or (isinstance(text, (list, tuple)) and not text):
        raise TextError(
            "no text given: pass a text, a list of texts, or model.prompts(texts), e.g. text='a photo of a cat'."
        )
    if isinstance(others, (str, bytes)):
        raise MethodError(
            f"others must be a list of texts, e.g. others=[{others!r}]; got the string {others!r} "
            "(its letters would be taken as texts)."
        )
    if not all(isinstance(other, str) for other in others):
        raise MethodError("others must be a list of texts (strings).")
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else []
    check_others(texts, others)


def check_others(texts: Sequence[str], others: Sequence[str]) -> None:
    """Refuse an other text (``--other``, ``others=``) that is one of the explained texts: the probability
    would be over a set that holds the text twice (at most 0.5, without a word), a contrast with itself zero."""
    explained = {" ".join(text.split()) for text in texts if isinstance(text, str)}
    for other in others:
        if isinstance(other, str) and " ".join(other.split()) in explained:
            raise MethodError(
                f"the other text {other!r} (--other, others=) is an explained text itself: a "
                "probability over a set holding it twice is at most 0.5, a contrast with itself is "
                "zero. List only the OTHER prompts of the set."
            )


def family_target(model: ModelHandle, target: str | Target | None, others: Sequence[str] = ()) -> Target:
    """The target to explain, checked against the model's family (``None``: the family's default)."""
    chosen = model.family.default_target(others) if target is None else model.family.target(target, others)
    model.family.check_target(chosen, model.model)
    return chosen


def method_spec(name: str, side: str, family: str | None = None) -> MethodSpec:
    """The registered method ``name`` for ``side``, checked against the model ``family`` when given."""
    spec = METHODS.get(name)
    if family is not None:
        spec.check_family(family)
    if getattr(spec, side) is None:
        sided = [s.name for s in METHODS if getattr(s, side) is not None]
        raise MethodError(f"method {name!r} has no {side}-side explanation; {side}-side methods: {', '.join(sided)}.")
    return spec


def run_method(model: ModelHandle, ctx: Context, spec: MethodSpec, options: dict) -> MapResult:
    function = getattr(spec, ctx.side)
    try:
        return function(ctx, **options)
    except TypeError as error:
        if "unexpected keyword" in str(error):
            raise MethodError(f"{spec.name}: {error}. Its options: {spec.defaults}.") from error
        raise


def method_for(model: ModelHandle, method: str, side: str) -> MethodSpec:
    """The method ``method`` for ``side`` of ``model``: a one-line error when the model's family has no such
    side, or the method does not support the family or the side."""
    if not model.family.has_side(side):
        raise MethodError(
            f"a {model.family.name} model has no {side} side to explain; it has {', '.join(model.family.towers)}."
        )
    return method_spec(method, side, model.family.name)


def tower_layers(model: ModelHandle, side: str) -> int | None:
    """How many layers the tower of ``side`` has (``None`` when the model does not say)."""
    config = getattr(model, "vision_config" if side == "image" else "text_config", None)
    layers = getattr(config, "num_hidden_layers", None)
    return int(layers) if isinstance(layers, int) else None


def _run(model, image, text, method, side, target, options) -> Explanation | list[Explanation]:
    spec = method_for(model, method, side)
    spec.check_target(target, side, model.family.name)
    spec.check_options(side, options, layers=tower_layers(model, side))
    read = _read(model, image)  # decoded once, upright if the pipeline applies EXIF orientation: the pixels
    decoded = None if read is None else [item for item, _ in read]  # (RGB under the model's own rule) ...
    originals = None if decoded is None else [to_rgb(item) for item in decoded]  # ... and methods' originals
    pixels = model.pixels(decoded if decoded is not None else image)
    batch = model.tokens(text)
    pairs = pixels.shape[0] * batch.input_ids.shape[0]
    single = pairs == 1 and not isinstance(image, (list, tuple)) and not isinstance(text, (list, tuple))
    ctx = Context(handle=model, side=side, pixels=pixels, text=batch, target=target, originals=originals)
    result = run_method(model, ctx, spec, dict(options))
    own = ctx.model_scores()
    sources = (
        None
        if read is None
        else [
            {"image": str(item) if isinstance(item, (str, Path)) else None, "exif_orientation": orientation}
            for item, (_, orientation) in zip(image if isinstance(image, (list, tuple)) else [image], read)
        ]
    )
    explanations = wrap(model, ctx, spec, result, own, sources)
    _attach_images(model, explanations, originals, pixels, whole_image=bool(result.options.get("original")))
    return explanations[0] if single else Explanations(explanations)


class Explanations(list):
    """A list of ``Explanation`` that Jupyter shows as one grid figure (``faithclip.plot``)."""

    def _repr_png_(self) -> bytes | None:
        from faithclip.report.figures import SCREEN_DPI, figure_bytes, plot

        return figure_bytes(plot(self), "png", dpi=SCREEN_DPI) if self else None


def crop_region(model: ModelHandle, width: int, height: int) -> tuple[float, float, float, float]:
    """The model's centre crop as ``(left, top, right, bottom)`` in the ORIGINAL image's pixels (the crop
    box of the resized image, scaled back by the resize factors of each axis)."""
    resized_width, resized_height = model.preprocess.resized_size(width, height)
    left, top, right, bottom = model.preprocess.crop_box(width, height)
    scale_x, scale_y = width / resized_width, height / resized_height
    return (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)


def _attach_images(
    model: ModelHandle, explanations: list[Explanation], originals: list | None, pixels: torch.Tensor, whole_image: bool
) -> None:
    """Give each explanation the image it explains (RGB, as read) and the box of it its map covers:
    the model's crop, or the whole image for methods that ran on the whole image (``original`` option).
    Pixel tensors are shown as the crop they are."""
    if originals is None:
        rgb = model.preprocess.denormalize(pixels.detach().float().cpu()).clamp(0, 255).round().byte()  # (B, 3, H, W)
        originals = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in rgb]
        whole_image = True
    per_image = len(explanations) // max(len(originals), 1)
    outside = _domain_warnings(model, pixels)
    for index, explanation in enumerate(explanations):
        image = originals[index // per_image]
        if outside[index // per_image] and outside[index // per_image] not in explanation.warnings:
            explanation.warnings.append(outside[index // per_image])
        width, height = image.size
        explanation.source_image = image
        explanation.region = (
            (0.0, 0.0, float(width), float(height)) if whole_image else crop_region(model, width, height)
        )


def _domain_warnings(model: ModelHandle, pixels: torch.Tensor) -> list[str | None]:
    """Per image: the shipped shapes stand-ins' out-of-domain warning on the pixels the model saw
    (``faithclip.shapes.domain``); ``None`` for images inside the shapes world and for every other model."""
    from faithclip.models.loading import shipped_models

    if model.name not in shipped_models():
        return [None] * pixels.shape[0]
    from faithclip.shapes.domain import domain_warning

    rgb = model.preprocess.denormalize(pixels.detach().float().cpu()).clamp(0, 255).round().byte()  # (B, 3, H, W)
    return [domain_warning(image.permute(1, 2, 0).numpy(), model.name) for image in rgb]


def _read(model: ModelHandle, image: Any) -> list | None:
    """The user's images as (PIL image in its own mode, EXIF-orientation record) when given as images or
    paths (``None`` for pixel tensors). The model's preprocessing converts them to RGB under its pipeline's
    rule; methods that, like the official Grad-ECLIP pipeline, look at the image before preprocessing get
    the RGB form."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if all(isinstance(item, (str, Path, Image.Image)) for item in items):
        return [model.read(item) for item in items]
    return None


def orientation_note(orientation: dict | None) -> str | None:
    """A warning when the image has an EXIF orientation its model's pipeline does not apply."""
    if orientation is None or orientation["applied"]:
        return None
    return (
        f"the image's EXIF orientation tag ({orientation['tag']}) is not applied: this model's pipeline "
        "reads the pixels as stored, so the map is on the image as stored, not as a viewer displays it"
    )


def wrap(
    model: ModelHandle,
    ctx: Context,
    spec: MethodSpec,
    result: MapResult,
    own: torch.Tensor,
    sources: list[dict] | None = None,
) -> list[Explanation]:
    """One ``Explanation`` per (image, text) pair, image-major. ``sources`` (one per image): the file it was
    read from and what was done with its EXIF orientation, for the record."""
    if not bool(torch.isfinite(result.maps).all()):  # never a silent wrong result (a fp16 overflow, a plugin's NaN)
        raise MethodError(
            f"{spec.name} produced NaN or infinite map values in {str(model.dtype).replace('torch.', '')}"
            + ("; run it in float32 (--dtype float32)." if model.dtype != torch.float32 else ".")
        )
    out = []
    input_size = result.input_size or tuple(ctx.pixels.shape[-2:])
    for b in range(ctx.num_images):
        source = sources[b] if sources else {"image": None, "exif_orientation": None}
        for k in range(ctx.num_texts):
            notes = map_warnings(result.maps[b, k], ctx.side)
            if ctx.text.truncated and ctx.text.truncated[k]:
                notes.append(f"text truncated to the context of {model.context_length} tokens")
            notes += [note for note in (ctx.text.unknown_note(k), orientation_note(source["exif_orientation"])) if note]
            out.append(
                Explanation(
                    map=result.maps[b, k].cpu(),
                    score=float(result.scores[b, k]),
                    model_score=float(own[b, k]),
                    method=spec.name,
                    side=ctx.side,
                    target=ctx.target.name,
                    options=dict(result.options),
                    layer_indices=list(result.layer_indices),
                    model_id=model.name,
                    modifies_model=spec.modifies_model,
                    modifies_input=spec.modifies_input,
                    text=ctx.text.texts[k],
                    image=source["image"],
                    exif_orientation=source["exif_orientation"],
                    tokens=ctx.text.tokens[k],
                    input_size=tuple(int(s) for s in input_size),
                    warnings=notes,
                )
            )
    return out


def grad_eclip_official_explain(
    handle: ModelHandle, image: Any | Sequence[Any], text: str | Sequence[str], *, side: str = "image", **options: Any
) -> list:
    """Official Grad-ECLIP explanations with the ORIGINAL image(s) used for the keep-size input.

    ``image`` is a PIL image or path (or a list); the model's prediction uses its standard preprocessing
    of the same image. Returns one ``Explanation`` per (image, text) pair, image-major; each records the
    rewritten score it explained (``score``) and the model's own (``model_score``), so ``p1_gap`` shows
    the departure.
    """
    spec = method_spec("grad_eclip_official", side)
    target = family_target(handle, options.pop("target", None), options.pop("others", ()))
    spec.check_options(side, options, layers=tower_layers(handle, side))  # before any work, as explain does
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    batch = handle.tokens(text)
    spec.check_target(target, side, handle.family.name)  # the rewrite explains a pooled score only
    out = []
    for single in images:
        ctx = Context(handle=handle, side=side, pixels=handle.pixels(single), text=batch, target=target)
        extra = {"original": single} if side == "image" else {}
        result = getattr(spec, side)(ctx, **extra, **options)
        out.extend(wrap(handle, ctx, spec, result, ctx.model_scores()))
    return out
