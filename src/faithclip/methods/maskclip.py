"""MaskCLIP (Zhou, Loy & Dai, "Extract Free Dense Labels from CLIP", ECCV 2022): the value path of the last block.

MaskCLIP drops the query-key attention of the LAST vision block and sends every token through the value
path alone. With x the input of the last block, v = v_proj(ln_1(x)) per token (all heads together):

    u_j   = x_j + out_proj(v_j)                       (attention replaced by the identity on values)
    f_j   = u_j + MLP(ln_2(u_j))                      (the block's own residual MLP)
    e_j   = visual_projection(post_layernorm(f_j))    (the model's head, applied to every token)
    map_j = target(e_j, t_k)                          (cosine with the text embedding by default)

On a tower pooled by an attention head (SigLIP) the last attention is the head's own: MaskCLIP's rule
drops its query-key attention, so each token goes through the head as its only key (``Family.token_head``)
and the blocks run as the model runs them. Every family's block MLP and per-token head come from its
adapter (``Family.block_mlp``, ``Family.token_head``).

This is MaskCLIP's ViT head (value -> out_proj, residual, FFN, final norm, projection), exactly
Grad-ECLIP's ``v_final`` (``generate_emap.py``, ``clip_encode_dense``). Grad-ECLIP's ``mask_clip`` further
multiplies by a key-key cosine; that is Grad-ECLIP's variant, not MaskCLIP's, and is not applied.
MaskCLIP+'s key smoothing and prompt denoising are refinements for segmentation and are not applied.

The map is the explained target evaluated per patch token (cosine for the default target, as the paper;
``logit``/``contrast``/``probability`` apply the same formula to ``e_j``). The explained forward is NOT the
model's own (``modifies_model=True``): the class token's score is unchanged, the patch tokens' are new.
"""

from __future__ import annotations

import torch

from faithclip.methods.context import Context, MapResult
from faithclip.models.families import family_of
from faithclip.probe import Probe, encoder_layers
from faithclip.registry import MethodSpec, register_method


def value_path_tokens(model, hidden_in: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's per-token embeddings from the last block's input ``(B, T, D)`` and values ``(B, T, D)``
    -> ``(B, T, P)`` projected (not normalised) token embeddings."""
    family = family_of(model)
    block = encoder_layers(model, "vision")[-1]
    residual = hidden_in + family.attention(block).out(v)  # (B, T, D): attention -> identity on values
    features = family.block_mlp(block, residual)  # (B, T, D)
    return family.token_head(model, features)  # (B, T, P)


def dense_scores(ctx: Context, token_embeds: torch.Tensor) -> torch.Tensor:
    """The target of every token embedding ``(B, T, P)`` against the K texts -> ``(B, K, T)``."""
    batch, tokens, width = token_embeds.shape
    flat = ctx.score(token_embeds.reshape(batch * tokens, width), ctx.fixed_text_embeds())  # (B*T, K)
    return flat.reshape(batch, tokens, -1).transpose(1, 2)  # (B, K, T)


def maskclip(ctx: Context) -> MapResult:
    model = ctx.handle.model
    text_embeds = ctx.fixed_text_embeds()
    ctx.extra_embeds()
    last = len(ctx.encoder_layers()) - 1  # the last block
    pooled = ctx.pooling is not None  # the last attention is an attention-pooling head's (SigLIP)
    with torch.no_grad():
        with Probe(
            model, "vision", layer_indices=[last], capture=("hidden_out",) if pooled else ("hidden_in", "v")
        ) as probe:
            image_embeds = ctx.handle.encode_image(ctx.pixels)  # the model's own forward, (B, P)
        if pooled:  # the head's value path: each token its only key (Family.token_head)
            tokens = ctx.family.token_head(model, probe.captures[last].require("hidden_out")[0])
        else:
            tokens = value_path_tokens(model, *probe.captures[last].require("hidden_in", "v"))
        scores = ctx.score(image_embeds, text_embeds)  # (B, K)
        per_token = dense_scores(ctx, tokens)  # (B, K, T)
    return MapResult(maps=ctx.token_map(per_token), scores=scores, layer_indices=[ctx.num_layers - 1], options={})


register_method(
    MethodSpec(
        name="maskclip",
        assumes_pooled_score="it scores every image token through the pooled token's ITC head, not through the ITM head",
        families=("*",),  # the family's attention parts, block MLP and per-token head
        paper="Zhou, Loy & Dai, Extract Free Dense Labels from CLIP (MaskCLIP), ECCV 2022",
        image=maskclip,
        modifies_model=True,
        defaults={},
        summary="cosine(text, proj(ln_post(u + MLP(ln_2(u))))), u = x + out_proj(v_proj(ln_1(x))) in the last block",
    )
)
