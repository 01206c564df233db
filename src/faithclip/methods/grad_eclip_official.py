"""Grad-ECLIP as the OFFICIAL code computes it (github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py``
and the two notebooks), reproduced exactly so that it can be audited ("Debunking Grad-ECLIP", arXiv
2605.12952). It explains a DIFFERENT model: see ``faithclip.methods.official.rewrite``.

Image side. The last ``layers`` blocks are recomputed with ONE head (scale 1/sqrt(D)) on the
keep-size input (``faithclip.methods.official.keepsize``; interpolated position embeddings). With S the cosine
of the rewritten image embedding and the text embedding, o the one-head attention output before
out_proj, g = dS/do at the class token, v the raw value vectors, and

    lambda_j = minmax_{j in patches} cos(q~_cls, k~_j),  q~, k~ = out_proj(q), out_proj(k)  (lambda_qk="out_proj",
               the evaluation script) or the raw q, k (lambda_qk="raw", the image notebook),

    map_j = sum_l ReLU( lambda_j * sum_c g_c v_jc )          over patch tokens j.

Text side. The last ``text_layers`` (8) text blocks are recomputed with one head; the text is padded
with id 0 to the full context (as ``clip.tokenize``) under the causal mask only; the image embedding is
the ORIGINAL model's on the standard crop. At the end token e, with lambda min-max normalised over ALL
positions:

    map = ReLU( sum_l lambda_j * sum_c g_c v_jc ),  kept on tokens 1..e-1, normalised to sum 1.

The official ``__main__`` also runs ``ln_post`` on every token; only the class token is used, and a
LayerNorm acts per token, so it does not change the result. ``half=True`` runs on an fp16 copy of the
model as the official CUDA code does.

Each published variant keeps its own input rule: ``lambda_qk="out_proj"`` (``generate_emap.py``) caps the
short side at 640 px before the keep-size resize, ``lambda_qk="raw"`` (the image notebook) does not
(``variant_cap``; ``cap=`` overrides). On the published repository's ``whippet.png`` (1032x689, patch 16)
that is a 40x60 grid for the evaluation script and 43x65 for the notebook.

ViT classifiers (``vit`` family) follow the published ViT notebook instead (``faithclip.methods.official.vit``):
one head scaled by the model's per-head 1/sqrt(D/H), the LayerNormed input as the attention's residual,
the class logit as the score, raw q, k for lambda (``lambda_qk="raw"`` by default), no short-side cap.
BLIP (``gradeclip_adaptation_blip.ipynb``): the image side only, lambda_qk="raw", no cap, and a one-head rewrite
that keeps the model's softmax scale (``faithclip.methods.official.blip``); the family declares which
(``Family.official``: its variants and the module of its rewritten forward).

The keep-size input needs the ORIGINAL image: pass it as ``original=`` (a PIL image or path, or a list
with one per image). Without it the model's own crop is used (warned): only the one-head rewrite departs.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from faithclip.deprecation import warn_deprecated
from faithclip.errors import ImageError, MethodError
from faithclip.methods.context import Context, MapResult
from faithclip.methods.official.keepsize import (
    OFFICIAL_SHORT_SIDE_CAP,
    keep_size_pixels,
    keep_size_size,
)
from faithclip.models.clip import ModelHandle
from faithclip.registry import MethodSpec, register_method


def _half_copy(handle: ModelHandle) -> ModelHandle:
    warnings.warn("half=True explains an fp16 copy of the model (the official CUDA setting).", stacklevel=3)
    return ModelHandle(
        model=copy.deepcopy(handle.model).half(),
        tokenizer=handle.tokenizer,
        preprocess=handle.preprocess,
        name=f"{handle.name} (fp16)",
    )


def image_maps(
    ctx: Context, pixels: torch.Tensor, layers: int, lambda_qk: str, model: Any | None = None, heads: int | None = 1
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Official image maps of ONE input ``pixels (1, 3, H, W)`` against the context's K texts, by the model
    family's published pipeline (``Family.official.pipeline``: CLIP's ``generate_emap.py``, the BLIP and ViT
    notebooks). Returns maps ``(K, gh, gw)``, the rewritten scores ``(K,)`` and the grid. ``heads=None``
    applies the same formula to the model's own heads (the audit's ablation arms)."""
    return ctx.family.official.pipeline.image_maps(ctx, pixels, layers, lambda_qk, model, heads)


def text_maps(ctx: Context, layers: int, lambda_qk: str, model: Any | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Official text maps ``(B, K, L)`` (L = the context's token length) and rewritten scores ``(B, K)``: the
    family's published pipeline (``Family.official.pipeline``; only CLIP's has a text side)."""
    return ctx.family.official.pipeline.text_maps(ctx, layers, lambda_qk, model)


def _originals(original: Any, count: int) -> list[Any]:
    items = list(original) if isinstance(original, (list, tuple)) else [original]
    if len(items) != count:
        raise MethodError(
            f"original= holds {len(items)} images but {count} were explained; give one original per image."
        )
    return items


def variant_cap(lambda_qk: str, cap: int | None | str = "auto") -> int | None:
    """The keep-size short-side cap of each published variant: ``lambda_qk="out_proj"`` is the evaluation script,
    whose loop caps the short side at 640 px; ``lambda_qk="raw"`` is the image notebook, which has no cap.
    An explicit ``cap`` (an int, or ``None`` for no cap) overrides the variant's."""
    if cap != "auto":
        return cap
    return OFFICIAL_SHORT_SIDE_CAP if lambda_qk == "out_proj" else None


def check_keep_size(image: Any, patch: int) -> None:
    """The keep-size input rounds each side to the nearest multiple of the patch: a side shorter than half
    a patch rounds to nothing (a 1x1 or 3000x1 image), which the published code does not guard."""
    width, height = image.size
    if min(keep_size_size(width, height, patch)) == 0:
        raise ImageError(
            f"grad_eclip_official: a {width}x{height} image is too small for the official keep-size input, which "
            f"needs each side to be at least {(patch + 1) // 2} px (half of the model's {patch}-px patch); "
            "use a larger image or another method."
        )


def deprecated_qk(lambda_qk: str | None, qk: str | None) -> str | None:
    """``lambda_qk``, or the value given under its old name ``qk`` (deprecated: one name with grad_eclip and
    attention_eclip; ``qk`` goes in the next release), with a ``DeprecationWarning``."""
    if qk is None:
        return lambda_qk
    warn_deprecated(
        "grad_eclip_official's option qk is deprecated and will be removed in the next release; "
        "use lambda_qk (the name grad_eclip and attention_eclip use)."
    )
    if lambda_qk is not None and lambda_qk != qk:
        raise MethodError(
            f"grad_eclip_official: lambda_qk={lambda_qk!r} and its deprecated name qk={qk!r} disagree; "
            "give lambda_qk only."
        )
    return qk


def grad_eclip_official_image(
    ctx: Context,
    layers: int = 1,
    lambda_qk: str | None = None,
    half: bool = False,
    original: Any = None,
    cap: int | None | str = "auto",
    qk: str | None = None,
) -> MapResult:
    ctx.last_layers(layers)  # 1 <= layers <= the image tower's depth, as every method checks
    published = ctx.family.official
    lambda_qk = deprecated_qk(lambda_qk, qk)
    lambda_qk = (
        published.lambda_qk[0] if lambda_qk is None else lambda_qk
    )  # the family's published variant (CLIP: out_proj)
    cap = variant_cap(lambda_qk, cap) if published.short_side_cap is not None else (None if cap == "auto" else cap)
    handle = _half_copy(ctx.handle) if half else ctx.handle
    original = original if original is not None else getattr(ctx, "originals", None)  # if the API supplies them
    if original is None:
        warnings.warn(
            "grad_eclip_official: no original= image given, so the keep-size input is the model's own crop; "
            "pass original=<PIL image or path> to reproduce the official input.",
            stacklevel=3,
        )
        inputs = [ctx.pixels[b : b + 1] for b in range(ctx.num_images)]
    else:
        rgbs = [handle.rgb(image) for image in _originals(original, ctx.num_images)]
        for rgb in rgbs:
            check_keep_size(rgb, handle.patch_size)
        inputs = [keep_size_pixels(rgb, handle.patch_size, handle.preprocess, cap)[None] for rgb in rgbs]
    results = [
        image_maps(ctx, pixels.to(handle.device, handle.dtype), layers, lambda_qk, handle.model) for pixels in inputs
    ]
    grids = {grid for _, _, grid in results}
    if len(grids) > 1:
        raise MethodError(
            "the originals have different keep-size grids; explain them one at a time "
            "(faithclip.api.grad_eclip_official_explain does this)."
        )
    size = tuple(inputs[0].shape[-2:])
    return MapResult(
        maps=torch.stack([m for m, _, _ in results]),
        scores=torch.stack([s for _, s, _ in results]),
        layer_indices=list(range(ctx.num_layers - layers, ctx.num_layers)),
        input_size=size,
        options={"layers": layers, "lambda_qk": lambda_qk, "half": half, "original": original is not None, "cap": cap},
    )


def grad_eclip_official_text(
    ctx: Context, layers: int = 8, lambda_qk: str | None = None, half: bool = False, qk: str | None = None
) -> MapResult:
    lambda_qk = deprecated_qk(lambda_qk, qk) or "out_proj"  # the published text code reads q, k through out_proj
    if not ctx.family.official.text:
        raise MethodError(
            f"grad_eclip_official has no text side for {ctx.family.name} models: the published "
            "pipeline explains their images only; use grad_eclip or attention_eclip on texts."
        )
    handle = _half_copy(ctx.handle) if half else ctx.handle
    maps, scores = text_maps(ctx, layers, lambda_qk, handle.model)
    used = min(layers, ctx.num_layers)
    return MapResult(
        maps=maps,
        scores=scores,
        layer_indices=list(range(ctx.num_layers - used, ctx.num_layers)),
        options={"layers": layers, "lambda_qk": lambda_qk, "half": half},
    )


register_method(
    MethodSpec(
        name="grad_eclip_official",
        assumes_pooled_score="the published pipeline rewrites the image tower's class-token path to the ITC embedding",
        families=("*",),  # every family whose adapter declares a published pipeline (family_sides)
        paper="Zhao et al., ICML 2024, official code github.com/Cyang-Zhao/Grad-Eclip (audited in arXiv 2605.12952)",
        image=grad_eclip_official_image,
        text=grad_eclip_official_text,
        modifies_model=True,
        modifies_input=True,
        family_sides=lambda family: (
            () if family.official is None else ("image", "text") if family.official.text else ("image",)
        ),
        defaults={
            "layers": "1 (image) / 8 (text)",
            "lambda_qk": "the family's published variant (CLIP: out_proj, the evaluation script; ViT and BLIP: raw, the notebooks)",
            "half": False,
            "original": None,
            "cap": "auto (640 for lambda_qk=out_proj, the evaluation loop; none for lambda_qk=raw, the notebook)",
        },
        summary="the published pipeline: last block(s) recomputed with ONE head, keep-size input; explains a different model",
    )
)
