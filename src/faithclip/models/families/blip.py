"""BLIP image-text retrieval (``transformers.BlipForImageTextRetrieval``, ``model_type`` "blip").

Image tower: ``vision_model.encoder.layers``, pre-norm ViT blocks whose attention (``BlipAttention``) has
ONE fused ``qkv`` projection, reshaped ``(B, T, 3, H, d)``: q = channels ``[0:D]``, k = ``[D:2D]``,
v = ``[2D:3D]`` (the probe slices it so), output projection ``projection``; ``last_hidden_state`` is
post-LayerNormed and the ITC image feature is ``vision_proj(last_hidden_state[:, 0])`` (class token).

Text tower: ``text_encoder`` (a BERT: post-norm blocks ``encoder.layer[i]``, self-attention
``attention.self.{query,key,value}``, output projection ``attention.output.dense``), run WITHOUT the
image (its cross-attention layers serve only the ITM head). The ITC text feature is
``text_proj(last_hidden_state[:, 0])``: the [CLS] token (position 0) is pooled, so the text side's
pooled query is position 0, and a text map covers the words strictly between [CLS] and [SEP]
(``eos_positions`` hold the [SEP] position, ``text_config.sep_token_id``).

Score: ``BlipForImageTextRetrieval(..., use_itm_head=False).itm_score`` = ``normalize(image_feat) @
normalize(text_feat).T``, a plain cosine: the retrieval model has NO temperature (no ``logit_scale``),
so its ITC scores are ``cosine`` (default) and ``contrast``; ``logit`` and ``probability`` do not exist.

The image-text matching (ITM) scores, ``itm`` and ``itm_log_odds`` (``faithclip.targets.ITM_KINDS``): the text
encoder runs WITH cross-attention over the image tower's whole ``last_hidden_state`` (every token, all
attended: a mask of ones), and ``itm_head`` (a linear layer, 2 outputs, index 1 "match") reads its [CLS]
output; ``itm`` = softmax[1] (``use_itm_head=True``, the published demo's score), ``itm_log_odds`` = the
difference of the two logits. One fused text forward per (image, text) pair. These scores read every image
token, not the pooled class token (``Target.pooled`` is False): the image "features" are the last hidden state,
the text "features" the token batch.

Texts: BERT's tokenizer, ``[CLS] words [SEP] [PAD]...`` with an attention mask, as ``BlipProcessor`` calls
it (padded to the longest, truncated at ``max_position_embeddings``, 512: the processor sets no shorter
limit). Images: ``BlipImageProcessor``, squashed to 384 x 384 (no crop), CLIP mean/std.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from faithclip.errors import MethodError, ModelError
from faithclip.models.families import AttentionParts, Family, OfficialPipeline, register_family

#: the Grad-ECLIP BLIP notebook pads every text to 35 tokens (``padding="max_length", max_length=35``)
PUBLISHED_TEXT_LENGTH = 35


class BlipFamily(Family):
    name = "blip"
    model_types = ("blip",)
    model_class = "BlipForImageTextRetrieval"
    target_kinds = ("cosine", "contrast", "itm", "itm_log_odds")
    # the published BLIP notebook: image side only, raw q/k in lambda, keep-size input without a cap
    official = OfficialPipeline(
        lambda_qk=("raw",), text=False, short_side_cap=None, module="faithclip.methods.official.blip"
    )

    def tower_module(self, model: Any, tower: str) -> torch.nn.Module:
        self.check_tower(tower)
        return model.vision_model if tower == "vision" else model.text_encoder

    def tower_config(self, model: Any, tower: str) -> Any:
        return getattr(model.config, f"{tower}_config")

    def blocks(self, model: Any, tower: str) -> Sequence[torch.nn.Module]:
        module = self.tower_module(model, tower)
        return module.encoder.layers if tower == "vision" else module.encoder.layer

    def attention(self, block: torch.nn.Module) -> AttentionParts:
        if hasattr(block, "self_attn"):  # vision: BlipEncoderLayer
            attention = block.self_attn
            return AttentionParts(
                module=attention, out=attention.projection, heads=int(attention.num_heads), qkv=attention.qkv
            )
        attention = block.attention.self  # text: BlipTextLayer (its crossattention is the ITM head's)
        return AttentionParts(
            module=attention,
            out=block.attention.output.dense,
            heads=int(attention.num_attention_heads),
            q=attention.query,
            k=attention.key,
            v=attention.value,
        )

    def input_module(self, model: Any, side: str) -> torch.nn.Module:
        return (
            model.vision_model.embeddings.patch_embedding
            if side == "image"
            else model.text_encoder.embeddings.word_embeddings
        )

    def embedding_module(self, model: Any, side: str) -> torch.nn.Module:
        return model.vision_proj if side == "image" else model.text_proj

    def query_positions(self, side: str, num_inputs: int, text: Any, device: torch.device) -> torch.Tensor:
        return torch.zeros(num_inputs, dtype=torch.long, device=device)  # class token / [CLS]

    def encode_image(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        return model.vision_proj(model.vision_model(pixel_values=pixels).last_hidden_state[:, 0])

    def token_head(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        """``vision_proj(post_layernorm(x))``: the vision tower's final LayerNorm (inside its
        ``last_hidden_state``) and the ITC projection, what the class token passes through."""
        return model.vision_proj(model.vision_model.post_layernorm(tokens))

    def encode_text(self, model: Any, text: Any) -> torch.Tensor:
        hidden = model.text_encoder(input_ids=text.input_ids, attention_mask=text.attention_mask).last_hidden_state
        return model.text_proj(hidden[:, 0])

    # ---- the ITM head -------------------------------------------------------------------------------
    def image_features(self, model: Any, pixels: torch.Tensor, target: Any) -> torch.Tensor:
        """ITC: ``encode_image``. ITM: the image tower's ``last_hidden_state`` ``(B, T, Dv)``, every token of which
        the fused text encoder cross-attends to."""
        if target.pooled:
            return self.encode_image(model, pixels)
        return model.vision_model(pixel_values=pixels).last_hidden_state

    def text_features(self, model: Any, text: Any, target: Any) -> Any:
        """ITC: ``encode_text``. ITM: the token batch itself; the text encoder runs inside the score, once per
        (image, text) pair, because it reads the image."""
        return self.encode_text(model, text) if target.pooled else text

    def itm_logits(self, model: Any, image_tokens: torch.Tensor, text: Any) -> torch.Tensor:
        """``(B, T, Dv)`` image tokens and K texts -> the ITM head's logits ``(B, K, 2)``: for each pair, the text
        encoder over its tokens with cross-attention to all T image tokens, the head on the [CLS] output."""
        images, texts = image_tokens.shape[0], text.input_ids.shape[0]
        # pair p = (image p // K, text p % K)
        image_of = torch.arange(images, device=image_tokens.device).repeat_interleave(texts)  # (B*K,)
        text_of = torch.arange(texts, device=image_tokens.device).repeat(images)  # (B*K,)
        paired = image_tokens[image_of]  # (B*K, T, Dv)
        every_token = torch.ones(paired.shape[:2], dtype=torch.long, device=paired.device)  # (B*K, T)
        hidden = model.text_encoder(
            input_ids=text.input_ids[text_of],
            attention_mask=text.attention_mask[text_of],
            encoder_hidden_states=paired,
            encoder_attention_mask=every_token,
        ).last_hidden_state
        return model.itm_head(hidden[:, 0]).reshape(images, texts, 2)  # [CLS] -> (B, K, 2)

    def score(
        self, target: Any, image_embeds: Any, text_embeds: Any, model: Any, extra_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ITC: the cosine (or contrast) of the embeddings. ITM: ``image_embeds`` are the image tokens and
        ``text_embeds`` the token batch (``image_features`` / ``text_features``)."""
        if target.pooled:
            return super().score(target, image_embeds, text_embeds, model, extra_embeds)
        from faithclip.targets import itm_score

        return itm_score(target.kind, self.itm_logits(model, image_embeds, text_embeds))

    def check_target(self, target: Any, model: Any = None) -> None:
        super().check_target(target, model)
        if target.pooled or model is None:
            return
        fused = all(hasattr(block, "crossattention") for block in model.text_encoder.encoder.layer)
        if not isinstance(getattr(model, "itm_head", None), torch.nn.Module) or not fused:
            missing = "itm_head" if fused else "cross-attention in its text encoder"
            raise MethodError(
                f"this BLIP model has no image-text matching head ({missing} is missing), so it has no "
                f"{target.kind!r} score; explain its ITC score (target cosine), or load a "
                "BlipForImageTextRetrieval checkpoint with its ITM weights."
            )

    def logit_scale(self, model: Any) -> torch.Tensor:
        """No temperature: the ITC score is the cosine itself (only ``cosine`` and ``contrast`` exist)."""
        return torch.ones((), dtype=self.parameter(model).dtype, device=self.parameter(model).device)

    def eos_token_id(self, model: Any) -> int | None:
        return int(model.config.text_config.sep_token_id)

    def lambda_context(self, handle: Any, text: Any) -> Any:
        """The texts as the BLIP pipeline pads them (``max_length=35``: every row to 35 tokens or its own
        length, pad id 0, padding masked): the score is the text's own, only the padding keys are new."""
        from faithclip.models.text import TextBatch

        ids, mask = text.input_ids, text.attention_mask
        length = max(PUBLISHED_TEXT_LENGTH, ids.shape[1])
        padded = torch.zeros(ids.shape[0], length, dtype=ids.dtype, device=ids.device)
        padded_mask = torch.zeros_like(padded)
        padded[:, : ids.shape[1]], padded_mask[:, : ids.shape[1]] = ids, mask
        return TextBatch(padded, padded_mask, text.eos_positions.clone(), list(text.texts), list(text.tokens))

    refused_metrics = {
        name: "BLIP's ITC score is a cosine with no temperature, so it defines no class probability"
        for name in (
            "zeroshot",
            "deletion_gradeclip",
            "insertion_gradeclip",
            "deletion_rise",
            "insertion_rise",
            "road_morf",
            "road_lerf",
        )
    }

    def cascade_blocks(self, model: Any) -> list[tuple[str, list[torch.nn.Module]]]:
        vision = model.vision_model
        return (
            [("vision_proj", [model.vision_proj]), ("post_layernorm", [vision.post_layernorm])]
            + self.block_cascade(model)
            + [("embeddings", [vision.embeddings])]
        )

    def check_model(self, model: Any) -> None:
        if not all(hasattr(model, part) for part in ("vision_model", "text_encoder", "vision_proj", "text_proj")):
            raise ModelError(
                f"{type(model).__name__} is not a BLIP image-text retrieval model; load one with "
                "faithclip.load(...) or transformers.BlipForImageTextRetrieval.from_pretrained(...)."
            )

    def default_preprocess(self, model: Any) -> Any:
        """``BlipImageProcessor``: bicubic resize of the whole image to the model's size, no crop, CLIP mean/std."""
        from faithclip.models.preprocess import ImagePreprocess

        return ImagePreprocess.from_dict(
            {"size": {"height": self.image_size(model), "width": self.image_size(model)}, "do_center_crop": False}
        )


BLIP = register_family(BlipFamily())
