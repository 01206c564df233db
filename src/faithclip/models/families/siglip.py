"""SigLIP (``transformers.SiglipModel``, model_type ``siglip``; Zhai et al., ICCV 2023).

Image tower: ``vision_model.encoder.layers`` (pre-norm blocks, ``self_attn.{q,k,v,out}_proj``) with NO
class token; the patch tokens, after ``post_layernorm``, are pooled by ``vision_model.head``
(``SiglipMultiheadAttentionPoolingHead``): a learned ``probe`` (1, 1, D) attends to them through one
``torch.nn.MultiheadAttention``, then ``y + MLP(LN(y))``, row 0. That head is the image tower's pooled
query (``pooling_attention``; docs/equivalence.md, "SigLIP: the attention-pooling head").

Text tower: ``text_model.encoder.layers`` with no causal mask, pooled at the LAST position
(``last_hidden_state[:, -1]``, then ``head``). SigLIP is trained on texts padded to ``max_length`` (64 for
the published models) with no attention mask, so texts are padded to the context and only ``input_ids``
reach the model; the whole padded sequence is the context lambda is normalised over. The query is the last
position; a text map covers the word tokens before the end token (a start token, if the tokenizer writes
one, excluded).

Scores: ``logit = exp(logit_scale) cos + logit_bias`` (default, the model's ``logits_per_image``),
``probability = sigmoid(logit)`` per pair (not a softmax over prompts), ``cosine``, ``contrast``.
"""

from __future__ import annotations

from typing import Any

import torch

from faithclip.errors import ModelError
from faithclip.models.families import AttentionParts, Family, PoolingAttention, register_family
from faithclip.targets import cosine_matrix

SENTENCEPIECE_EOS = 1  # "</s>" in the published SigLIP SentencePiece vocabulary (also its padding)


class SiglipFamily(Family):
    name = "siglip"
    model_types = ("siglip",)
    model_class = "SiglipModel"
    target_kinds = ("logit", "probability", "cosine", "contrast")
    probability_over_prompts = False
    official = None  # no published Grad-ECLIP pipeline for SigLIP

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

    def pooling_attention(self, model: Any, tower: str) -> PoolingAttention | None:
        if tower != "vision":
            return None
        head = model.vision_model.head
        return PoolingAttention(module=head, attention=head.attention, query=head.probe)

    def prefix_tokens(self, model: Any) -> int:
        return 0

    def embedding_module(self, model: Any, side: str) -> torch.nn.Module:
        """The image side's attention-pooling head, the text side's ``head`` (no projections)."""
        return model.vision_model.head if side == "image" else model.text_model.head

    def parameter(self, model: Any) -> torch.Tensor:
        return model.logit_scale

    def query_positions(self, side: str, num_inputs: int, text: Any, device: torch.device) -> torch.Tensor:
        """Image: row 0 of the pooling head's attention (its one learned query). Text: the last position."""
        last = 0 if side == "image" else text.input_ids.shape[1] - 1
        return torch.full((num_inputs,), last, dtype=torch.long, device=device)

    def text_support(self, model: Any, text: Any) -> torch.Tensor:
        """The word tokens: before the end token, and after a start token at position 0 when the tokenizer
        writes one (the published SentencePiece tokenizer does not; a word-level one may)."""
        positions = torch.arange(text.input_ids.shape[1], device=text.input_ids.device)
        start = self.start_token_id(model)
        first = (
            (text.input_ids[:, :1] == start).long() if start is not None else torch.zeros_like(text.input_ids[:, :1])
        )
        return (positions[None, :] >= first) & (positions[None, :] < text.eos_positions[:, None])

    def encode_image(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels).pooler_output

    def token_head(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        """SigLIP pools its tokens with an attention head (one learned query), so no token passes through a
        head on its own. The per-token head is that pooling head with the token as its ONLY key, where the
        attention weight is 1: ``h = out_proj(W_v LN_post(x) + b_v)``, then ``h + MLP(LN(h))``. It is what the
        head returns for an image whose tokens all equal x (the test's oracle); a faithclip choice, stated
        for the per-token methods, since their papers define none for attention pooling."""
        head = model.vision_model.head
        normed = model.vision_model.post_layernorm(tokens)  # (B, T, D)
        attention = head.attention  # torch.nn.MultiheadAttention, packed in_proj
        width = normed.shape[-1]
        weight, bias = attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :]
        values = torch.nn.functional.linear(normed, weight, bias)  # (B, T, D): W_v x + b_v
        hidden = attention.out_proj(values)  # softmax over one key is 1
        return hidden + head.mlp(head.layernorm(hidden))

    def encode_text(self, model: Any, text: Any) -> torch.Tensor:
        return model.get_text_features(input_ids=text.input_ids).pooler_output  # no mask, as trained

    def score(
        self,
        target: Any,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        model: Any,
        extra_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if target.kind not in ("logit", "probability"):
            return super().score(target, image_embeds, text_embeds, model, extra_embeds)
        cosine = cosine_matrix(image_embeds, text_embeds)  # (B, K)
        logit = model.logit_scale.detach().exp().to(cosine.dtype) * cosine + model.logit_bias.detach().to(cosine.dtype)
        return logit if target.kind == "logit" else torch.sigmoid(logit)

    def tokenizer_call(self, tokenizer: Any, texts: list[str], context_length: int) -> dict:
        """Padded to the whole context, as SigLIP is trained; only ``input_ids`` are used."""
        encoded = tokenizer(
            texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"]}

    def lambda_context(self, handle: Any, text: Any) -> Any:
        return text  # already the whole context the model sees (no mask): lambda's span is the input itself

    def eos_token_id(self, model: Any) -> int | None:
        """The config's end id when it is in the vocabulary, else ``</s>`` = 1 of the published tokenizer
        (transformers' SigLIP text config defaults to CLIP's 49407, outside SigLIP's 32,000 ids)."""
        config = model.config.text_config
        eos = config.eos_token_id
        return int(eos) if isinstance(eos, int) and 0 <= eos < config.vocab_size else SENTENCEPIECE_EOS

    def start_token_id(self, model: Any) -> int | None:
        config = model.config.text_config
        bos = config.bos_token_id
        return (
            int(bos)
            if isinstance(bos, int) and 0 <= bos < config.vocab_size and bos != self.eos_token_id(model)
            else None
        )

    def check_model(self, model: Any) -> None:
        vision = getattr(model, "vision_model", None)
        if vision is None or not hasattr(model, "text_model") or not hasattr(model, "logit_bias"):
            raise ModelError(
                f"{type(model).__name__} is not a transformers SiglipModel; load one with faithclip.load(...) "
                "or transformers.SiglipModel.from_pretrained(...)."
            )
        if not getattr(vision, "use_head", False):
            raise ModelError(
                "this SigLIP vision tower has no attention-pooling head (vision_use_head=False), so it has "
                "no pooled image embedding to explain."
            )

    def class_logits(self, model: Any, scores: torch.Tensor) -> torch.Tensor:
        return scores  # the default score is the logit itself

    def label_probability(self, logits: torch.Tensor, label: int) -> torch.Tensor:
        """SigLIP's own probability of a pair: the sigmoid of its logit (not a softmax over the prompts)."""
        return torch.sigmoid(logits[:, label].double())

    def cascade_blocks(self, model: Any) -> list[tuple[str, list[torch.nn.Module]]]:
        vision = model.vision_model
        return (
            [("head", [vision.head]), ("post_layernorm", [vision.post_layernorm])]
            + self.block_cascade(model)
            + [("embeddings", [vision.embeddings])]
        )

    def default_preprocess(self, model: Any) -> Any:
        """``SiglipImageProcessor``'s defaults: the whole image squashed to size x size (bicubic), mean and
        std 0.5."""
        from faithclip.models.preprocess import PIPELINE_RULES, ImagePreprocess

        size = self.image_size(model)
        return ImagePreprocess(
            size=size,
            crop_height=size,
            crop_width=size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resize="exact",
            center_crop=False,
            **PIPELINE_RULES["transformers"],
        )


SIGLIP = register_family(SiglipFamily())
