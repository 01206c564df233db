"""CLIP Surgery (Li et al., "CLIP Surgery for Better Explainability with Enhancement in Open-Vocabulary
Tasks", arXiv 2304.05653, 2023), ViT image side, after the official code (xmed-lab/CLIP_Surgery).

Architecture surgery. From start block s on (the last ``layers`` blocks), a second path runs next to the
original one. Each surgery block l computes, from the ORIGINAL path's values v_l = v_proj(ln_1(x_l))
(x_l the original hidden state), a v-v self-attention per head h (queries and keys replaced by values):

    a_l^h = softmax(v_l^h v_l^h^T / sqrt(d_h)) v_l^h              (heads concatenated: vv_l, (T, D))
    z     = x_s + sum_{l >= s} out_proj(vv_l)                     (the new path: no MLP)

Patch token j gets f_j = normalise(visual_projection(post_layernorm(z_j))); the class token keeps the
original path (its embedding is the model's own image embedding e).

Feature surgery, for texts t_k (normalised embeddings):

- one text, or ``redundant="empty"``: subtract the embedding r of the empty prompt "" (what the official
  code does for a single text):  map_jk = <f_j, t_k - r>
- several texts (``redundant="set"``): with w_k = p_k / mean_k p_k, p = softmax_k(2 <e, t_k>),
  map_jk = sum_c (f_jc t_kc w_k - mean_k' f_jc t_k'c w_k')

Raw maps are returned (the official ``get_similarity_map`` min-max normalises and upsamples; those are
explicit steps on ``Explanation``). The official code also averages each text over 85 ImageNet prompt
templates; here the texts are used as given. Only the cosine target has a surgery formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faithclip.errors import MethodError
from faithclip.methods.context import Context, MapResult
from faithclip.models.clip import TextBatch
from faithclip.models.families import family_of
from faithclip.probe import Probe, encoder_layers
from faithclip.registry import MethodSpec, register_method

REDUNDANT = ("auto", "empty", "set")


def vv_attention(v: torch.Tensor, heads: int) -> torch.Tensor:
    """Value-value self-attention per head: ``(B, T, D)`` -> ``(B, T, D)`` (heads concatenated)."""
    batch, tokens, width = v.shape
    per_head = v.reshape(batch, tokens, heads, width // heads).transpose(1, 2)  # (B, H, T, d)
    weights = torch.softmax(per_head @ per_head.transpose(-1, -2) * (width // heads) ** -0.5, dim=-1)  # (B, H, T, T)
    return (weights @ per_head).transpose(1, 2).reshape(batch, tokens, width)  # (B, T, D)


def surgery_tokens(model, start: int, start_hidden: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """The new path's normalised token embeddings ``(B, T, P)`` from the start block's input ``(B, T, D)`` and
    the original values ``(B, T, D)`` of blocks ``start, start+1, ...``."""
    family = family_of(model)
    blocks = encoder_layers(model, "vision")
    path = start_hidden
    for block, v in zip(blocks[start:], values):
        parts = family.attention(block)
        path = path + parts.out(vv_attention(v, parts.heads))  # (B, T, D)
    embeds = family.token_head(model, path)  # (B, T, P)
    return F.normalize(embeds, dim=-1)


def feature_surgery(
    tokens: torch.Tensor, texts: torch.Tensor, image: torch.Tensor | None, redundant: torch.Tensor | None
) -> torch.Tensor:
    """CLIP Surgery's similarity, all inputs normalised: tokens ``(B, T, P)``, texts ``(K, P)``; either the
    redundant text feature ``(1, P)`` or the image embeddings ``(B, P)`` (set mode) -> ``(B, K, T)``."""
    if redundant is not None:
        return torch.einsum("btp,kp->bkt", tokens, texts - redundant)  # (B, K, T)
    prob = torch.softmax(2 * image @ texts.T, dim=-1)  # (B, K)
    weight = prob / prob.mean(-1, keepdim=True)  # (B, K)
    feats = tokens[:, None] * texts[None, :, None] * weight[:, :, None, None]  # (B, K, T, P)
    return (feats - feats.mean(dim=1, keepdim=True)).sum(-1)  # (B, K, T)


def empty_prompt(ctx: Context) -> TextBatch:
    """Token ids of the empty prompt ``[start, end]`` (the handle refuses empty strings on purpose)."""
    handle = ctx.handle
    if handle.tokenizer is not None:
        ids = torch.tensor(handle.tokenizer([""])["input_ids"], dtype=torch.long)
    else:
        config = handle.text_config
        end = config.eos_token_id if config.eos_token_id not in (None, 2) else config.vocab_size - 1
        ids = torch.tensor([[config.bos_token_id, end]], dtype=torch.long)
    ids = ids.to(handle.device)
    return TextBatch(ids, torch.ones_like(ids), handle.eos_positions(ids), [""], [None])


def clip_surgery(ctx: Context, layers: int | None = None, redundant: str = "auto") -> MapResult:
    if ctx.target.kind != "cosine":
        raise MethodError(
            f"clip_surgery defines its map for the cosine target only; got {ctx.target.name!r}. Use target='cosine'."
        )
    if redundant not in REDUNDANT:
        raise MethodError(f"redundant must be one of {REDUNDANT}, got {redundant!r}.")
    if redundant == "auto":
        redundant = "empty" if ctx.num_texts == 1 else "set"
    if redundant == "set" and ctx.num_texts == 1:
        raise MethodError(
            "redundant='set' subtracts the mean over the prompt set and needs at least two texts; "
            "use redundant='empty' for one text."
        )
    layers = max(1, round(ctx.num_layers / 2)) if layers is None else layers  # official: last 6 of 12
    surgery = ctx.last_layers(layers)
    model = ctx.handle.model
    text_embeds = F.normalize(ctx.fixed_text_embeds(), dim=-1)  # (K, P)
    with torch.no_grad():
        with Probe(model, "vision", layer_indices=surgery, capture=("hidden_in", "v")) as probe:
            image_embeds = ctx.handle.encode_image(ctx.pixels)  # the original path, (B, P)
        values = [probe.captures[i].require("v")[0] for i in surgery]
        tokens = surgery_tokens(model, surgery[0], probe.captures[surgery[0]].require("hidden_in")[0], values)
        scores = ctx.score(image_embeds, ctx.fixed_text_embeds())  # (B, K)
        removed = F.normalize(ctx.handle.encode_text(empty_prompt(ctx)), dim=-1) if redundant == "empty" else None
        per_token = feature_surgery(tokens, text_embeds, F.normalize(image_embeds, dim=-1), removed)  # (B, K, T)
    return MapResult(
        maps=ctx.token_map(per_token),
        scores=scores,
        layer_indices=surgery,
        options={"layers": layers, "redundant": redundant},
    )


def surgery_sides(family) -> tuple[str, ...]:
    """The image side on a family with a text tower whose default score is the cosine; nothing elsewhere."""
    return ("image",) if family.has_side("text") and family.default_target().kind == "cosine" else ()


register_method(
    MethodSpec(
        name="clip_surgery",
        assumes_pooled_score="it scores every image token through the pooled token's ITC head, not through the ITM head",
        # feature surgery subtracts text embeddings under a cosine: every family whose default score is the cosine
        # of a text tower's embedding (CLIP, BLIP's ITC). SigLIP explains its logit by default and has no empty
        # prompt it was trained on; a classifier has no text tower. Declared from the family, so a new CLIP-like
        # family needs no edit here.
        families=("*",),
        family_sides=surgery_sides,
        paper="Li et al., CLIP Surgery for Better Explainability with Enhancement in Open-Vocabulary Tasks, 2023",
        image=clip_surgery,
        modifies_model=True,
        defaults={
            "layers": "round(L/2) (6 of 12, the official count)",
            "redundant": "auto (empty for 1 text, set otherwise)",
        },
        summary="v-v attention path from the last `layers` blocks, minus the redundant (empty-prompt or set-mean) feature",
    )
)
