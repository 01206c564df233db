"""A ViT CLIP in the OpenAI checkpoint layout, written from the paper: the oracle for the checkpoint converter.

The computation follows the description in Radford et al. (2021), "Learning Transferable Visual Models
From Natural Language Supervision", Sec. 2.4: a Vision Transformer (Dosovitskiy et al., 2021; flattened
patches linearly projected, a class token, learned positions) with an extra LayerNorm on the embedded
tokens before the transformer; a text Transformer with masked (causal) self-attention whose highest
layer's activation at the end-of-text token is layer-normalised and linearly projected; 64-wide heads;
pre-LayerNorm residual blocks (the GPT-2 arrangement) with a 4x-wide MLP; cosine similarities scaled
by ``exp(logit_scale)``. The MLP activation defaults to GELU's sigmoid approximation ``x * sigmoid(1.702 x)``
(Hendrycks & Gimpel, 2016), which OpenAI's weights were trained with (``hidden_act="quick_gelu"``).

The parameter NAMES are the checkpoint format itself, as tabulated in the docstring of
``faithclip.models.openai_checkpoint`` (``visual.transformer.resblocks.0.attn.in_proj_weight`` packing
q, k, v row-wise, ``mlp.c_fc``, ``ln_1``, ``text_projection`` stored ``(width, embed)`` and used as
``x @ proj``, ...). Text is pooled at the argmax of the ids, the rule that module documents (the
end-of-text token has the largest id). The code is ours: attention is computed head by head from the
packed projection, patches are cut and projected by hand. It shares no code with transformers or
faithclip, so agreement with the converted ``CLIPModel`` checks the key mapping and the pooling rule
independently. Float32, ViT only.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SigmoidGELU(nn.Module):
    """GELU approximated as ``x * sigmoid(1.702 x)``: OpenAI CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention whose q, k, v projections are stacked in one ``(3 width, width)`` matrix."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """``(B, T, width)`` -> ``(B, T, width)``; with ``causal`` token i attends to tokens 0..i only."""
        tokens, width = x.shape[1], x.shape[2]
        projected = x @ self.in_proj_weight.T + self.in_proj_bias  # (B, T, 3 width)
        queries, keys, values = projected[..., :width], projected[..., width : 2 * width], projected[..., 2 * width :]
        head_width = width // self.heads
        blocked = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).triu(1)  # (T, T): the future
        per_head = []
        for head in range(self.heads):
            part = slice(head * head_width, (head + 1) * head_width)
            logits = queries[..., part] @ keys[..., part].transpose(1, 2) / math.sqrt(head_width)  # (B, T, T)
            if causal:
                logits = logits.masked_fill(blocked, float("-inf"))
            per_head.append(logits.softmax(dim=-1) @ values[..., part])  # (B, T, head_width)
        return self.out_proj(torch.cat(per_head, dim=-1))  # (B, T, width)


class Block(nn.Module):
    """Pre-LayerNorm residual block: ``x + attn(ln_1(x))``, then ``+ c_proj(act(c_fc(ln_2(.))))``."""

    def __init__(self, width: int, heads: int, activation: type[nn.Module]):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = PackedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, 4 * width), "c_proj": nn.Linear(4 * width, width)})
        self.act = activation()  # holds no weights: no checkpoint key

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        hidden = self.act(self.mlp["c_fc"](self.ln_2(x)))  # (B, T, 4 width)
        return x + self.mlp["c_proj"](hidden)


class BlockStack(nn.Module):
    """The ``resblocks`` of one tower, applied in order (batch-first)."""

    def __init__(self, width: int, layers: int, heads: int, activation: type[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads, activation) for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class PatchProjection(nn.Module):
    """Linear projection of flattened ``p x p`` patches; the weight keeps the checkpoint's conv shape ``(width, 3, p, p)``."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, 3, patch_size, patch_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, N, width)``, patches in row-major order."""
        width, channels, patch, _ = self.weight.shape
        batch, _, height, side = image.shape
        rows, columns = height // patch, side // patch
        cut = image.reshape(batch, channels, rows, patch, columns, patch)  # (B, 3, rows, p, columns, p)
        flat = cut.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * columns, channels * patch * patch)  # (B, N, 3 p p)
        return flat @ self.weight.reshape(width, -1).T  # (B, N, width)


class ImageTower(nn.Module):
    def __init__(
        self, resolution: int, patch_size: int, width: int, layers: int, embed_dim: int, activation: type[nn.Module]
    ):
        super().__init__()
        patches = (resolution // patch_size) ** 2
        self.conv1 = PatchProjection(width, patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(1 + patches, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = BlockStack(width, layers, width // 64, activation)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, embed)``: the class token's final state, normalised and projected."""
        patches = self.conv1(image)  # (B, N, width)
        batch, _, width = patches.shape
        first = self.class_embedding.reshape(1, 1, width).expand(batch, 1, width)  # (B, 1, width)
        tokens = torch.cat([first, patches], dim=1) + self.positional_embedding  # (B, 1 + N, width)
        states = self.transformer(self.ln_pre(tokens))
        return self.ln_post(states[:, 0]) @ self.proj


class CLIP(nn.Module):
    """Both towers and the temperature; ``state_dict()`` keys are exactly the OpenAI checkpoint's."""

    def __init__(
        self,
        *,
        embed_dim: int,
        image_resolution: int,
        vision_patch_size: int,
        vision_width: int,
        vision_layers: int,
        context_length: int,
        vocab_size: int,
        text_width: int,
        text_layers: int,
        activation: type[nn.Module] = SigmoidGELU,
    ):
        super().__init__()
        self.visual = ImageTower(
            image_resolution, vision_patch_size, vision_width, vision_layers, embed_dim, activation
        )
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, text_width))
        self.transformer = BlockStack(text_width, text_layers, text_width // 64, activation)
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.zeros(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, context)`` -> ``(B, embed)``, read at each row's largest id (the end-of-text token)."""
        states = self.token_embedding(text) + self.positional_embedding  # (B, context, width)
        states = self.ln_final(self.transformer(states, causal=True))
        ends = text.argmax(dim=-1)  # (B,)
        width = states.shape[-1]
        pooled = states.gather(1, ends.reshape(-1, 1, 1).expand(-1, 1, width)).squeeze(1)  # (B, width)
        return pooled @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarities times ``exp(logit_scale)``: ``(images, texts)`` and its transpose."""
        image_unit = nn.functional.normalize(self.encode_image(image), dim=-1)
        text_unit = nn.functional.normalize(self.encode_text(text), dim=-1)
        per_image = self.logit_scale.exp() * image_unit @ text_unit.T  # (images, texts)
        return per_image, per_image.T
