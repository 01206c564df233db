"""A method brought from outside faithclip: a plain callable ``(model, pixels, texts) -> maps``.

The callable receives faithclip's model handle (``model.model`` is the transformers model, ``model.family`` its family;
``model.encode_image`` / ``model.encode_text`` / ``model.tokens`` are its own forward and tokenizer), the
normalised pixels ``(B, 3, H, W)`` the model predicts from, and the K texts as strings. It returns maps
``(B, K, gh, gw)`` on the patch grid, ``(B, K, H, W)`` at pixel resolution, or ``(B, K, 3, H, W)`` per channel
(summed over channels, as attribution libraries' outputs usually are); or a pair ``(maps, scores)`` with
the ``(B, K)`` scores it explained: the family's default score (``Family.default_target``: CLIP's
and BLIP's cosine, SigLIP's logit, a classifier's class logit), for which the texts are prompts or class names. It declares nothing: ``faithclip check`` detects what it does
(docs/plugins.md). ``callable_method`` wraps it into a ``MethodSpec`` without registering it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from faithclip.errors import FaithclipError, MethodError
from faithclip.methods.context import Context, MapResult
from faithclip.registry import MethodSpec


def import_callable(reference: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (attribute paths like ``module:Class.method`` work)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise MethodError(f"{reference!r} is not module:function (e.g. mypackage.explain:my_method).")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise MethodError(f"cannot import {module_name!r} for {reference!r}: {error}. Is it on PYTHONPATH?") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise MethodError(f"{module_name!r} has no {attribute!r}; give module:function.")
        target = getattr(target, part)
    if not callable(target):
        raise MethodError(f"{reference!r} is not callable.")
    return target


def image_maps(ctx: Context, maps: torch.Tensor) -> torch.Tensor:
    """A callable's maps as ``(B, K, h, w)``: channels summed; patch grid or pixel resolution kept."""
    maps = torch.as_tensor(maps).detach()
    expected = (ctx.num_images, ctx.num_texts)
    if maps.dim() == 5:
        maps = maps.sum(dim=2)  # (B, K, 3, H, W) -> (B, K, H, W)
    if maps.dim() != 4 or tuple(maps.shape[:2]) != expected:
        raise MethodError(
            f"the callable returned maps of shape {tuple(maps.shape)}; expected (B, K, h, w) with "
            f"(B, K) = {expected}, on the patch grid {ctx.grid} or the pixels {tuple(ctx.pixels.shape[-2:])}."
        )
    if tuple(maps.shape[-2:]) not in (ctx.grid, tuple(ctx.pixels.shape[-2:])):
        raise MethodError(
            f"the callable's maps are {tuple(maps.shape[-2:])}; give them on the patch grid {ctx.grid} "
            f"or at the pixels' size {tuple(ctx.pixels.shape[-2:])}."
        )
    return maps.to(ctx.pixels.dtype)


def callable_method(function: Callable[..., Any], name: str, paper: str = "") -> MethodSpec:
    """A ``MethodSpec`` (image side, declaring nothing) around ``function(model, pixels, texts)``."""

    def run(ctx: Context) -> MapResult:
        default = ctx.family.default_target()
        if ctx.target.name != default.name:
            raise MethodError(
                f"{name} is a plain callable: it explains the model's default score only "
                f"({default.name} for {ctx.family.name} models)."
            )
        texts = [t if t is not None else "" for t in ctx.text.texts]
        try:
            output = function(ctx.handle, ctx.pixels, texts)
        except FaithclipError:
            raise
        except Exception as error:  # the plugin's own failure, in one line that names it (never a traceback)
            raise MethodError(f"{name} raised {type(error).__name__}: {error}".splitlines()[0]) from error
        maps, scores = output if isinstance(output, tuple) else (output, None)
        maps = image_maps(ctx, maps)
        reported = scores is not None
        scores = torch.as_tensor(scores).detach() if reported else ctx.model_scores()
        return MapResult(
            maps=maps, scores=scores, input_size=tuple(ctx.pixels.shape[-2:]), options={"scores_reported": reported}
        )

    return MethodSpec(
        name=name,
        paper=paper or f"user callable {name}",
        image=run,
        families=("*",),
        summary=f"{name}(model, pixels, texts) -> maps, brought from outside faithclip",
    )


__all__ = ["callable_method", "import_callable", "image_maps"]
