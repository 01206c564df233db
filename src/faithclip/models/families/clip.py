"""CLIP (``transformers.CLIPModel``; OpenAI and open_clip checkpoints are converted to it).

Image tower: ``vision_model.encoder.layers``, pre-norm blocks with ``self_attn.{q,k,v,out}_proj``; the
class token (position 0) is pooled through ``post_layernorm`` and ``visual_projection``. Text tower:
``text_model.encoder.layers`` under a causal mask; the end-of-text token is pooled (transformers' rule:
the first position holding ``eos_token_id``, or the largest id for legacy configs with ``eos_token_id``
2). Scores: cosine, ``exp(logit_scale)`` times it, the softmax over a prompt set, a contrast.
"""

from __future__ import annotations

from typing import Any

import torch

from faithclip.errors import ModelError
from faithclip.models.families import AttentionParts, Family, register_family


class ClipFamily(Family):
    name = "clip"
    model_types = ("clip",)
    fast_path = True
    model_class = "CLIPModel"

    def attention(self, block: torch.nn.Module) -> AttentionParts:
        attention = block.self_attn
        return AttentionParts(
            module=attention,
            out=attention.out_proj,
            heads=int(attention.num_heads),
            q=attention.q_proj,
            k=attention.k_proj,
            v=attention.v_proj,
        )

    def parameter(self, model: Any) -> torch.Tensor:
        return model.logit_scale

    def token_head(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        """``visual_projection(post_layernorm(x))``, what the class token passes through."""
        return model.visual_projection(model.vision_model.post_layernorm(tokens))

    def encode_image(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels).pooler_output

    def encode_text(self, model: Any, text: Any) -> torch.Tensor:
        return model.get_text_features(input_ids=text.input_ids, attention_mask=text.attention_mask).pooler_output

    def eos_token_id(self, model: Any) -> int | None:
        eos = model.config.text_config.eos_token_id
        if eos == 2 or eos is None:  # legacy configs: the end token is the largest id
            return int(model.config.text_config.vocab_size) - 1
        return int(eos)

    def eos_positions(self, model: Any, input_ids: torch.Tensor) -> torch.Tensor:
        if model.config.text_config.eos_token_id == 2:  # transformers' legacy rule: the largest id
            return input_ids.argmax(dim=-1)
        return super().eos_positions(model, input_ids)

    def check_model(self, model: Any) -> None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "vision_config") or not hasattr(model, "vision_model"):
            raise ModelError(
                f"{type(model).__name__} is not a transformers CLIPModel; load one with faithclip.load(...) "
                "or transformers.CLIPModel.from_pretrained(...)."
            )
        embeddings = getattr(model.vision_model, "embeddings", None)
        if embeddings is None or not hasattr(embeddings, "class_embedding"):
            raise ModelError(
                "this vision tower has no class token; CLS-query methods (Grad-ECLIP, Attention-ECLIP) need one."
            )


CLIP = register_family(ClipFamily())
