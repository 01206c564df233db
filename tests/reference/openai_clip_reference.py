"""A literal OpenAI-layout ViT CLIP, used as the oracle for the checkpoint converter.

Written from the structure of OpenAI's CLIP (Radford et al., 2021, "Learning Transferable Visual
Models From Natural Language Supervision", Sec. 2.4 and github.com/openai/CLIP's ``model.py``):
pre-LN residual blocks built on ``nn.MultiheadAttention`` in the sequence-first layout, a class
token read after ``ln_post``, a causally masked text transformer pooled at ``text.argmax(-1)`` (the
EOT token has the largest id), and projections stored as plain ``(width, embed)`` matrices.

It shares no code with transformers or faithclip, so agreement with the converted ``CLIPModel``
checks the key mapping and the pooling rule independently. Its ``state_dict()`` keys are exactly
OpenAI's (``visual.transformer.resblocks.0.attn.in_proj_weight``, ``text_projection``, ...).
Float32 only, no fp16 casting, no ResNet tower.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU OpenAI trained with: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); x is sequence-first, (T, B, width)."""

    def __init__(self, width: int, heads: int, activation: type[nn.Module] = QuickGELU):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", activation()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, activation: type[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, activation) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(
        self,
        resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        embed_dim: int,
        activation: type[nn.Module],
    ):
        super().__init__()
        grid = resolution // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, activation)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patches = self.conv1(image)  # (B, width, grid, grid)
        patches = patches.flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        batch, _, width = patches.shape
        cls = self.class_embedding.expand(batch, 1, width)  # (B, 1, width)
        x = torch.cat([cls, patches], dim=1) + self.positional_embedding  # (B, 1+grid*grid, width)
        x = self.ln_pre(x)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)  # via (T, B, width)
        return self.ln_post(x[:, 0, :]) @ self.proj  # (B, embed)


class CLIP(nn.Module):
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
        activation: type[nn.Module] = QuickGELU,
    ):
        super().__init__()
        self.visual = VisionTransformer(
            image_resolution,
            vision_patch_size,
            vision_width,
            vision_layers,
            vision_width // 64,
            embed_dim,
            activation,
        )
        self.transformer = Transformer(text_width, text_layers, text_width // 64, activation)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.zeros(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def causal_mask(self) -> torch.Tensor:
        """Additive mask: position i attends to positions <= i."""
        size = self.positional_embedding.shape[0]  # the context length
        return torch.full((size, size), float("-inf")).triu(1)  # (T, T)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding  # (B, T, width)
        x = self.transformer(x.transpose(0, 1), self.causal_mask()).transpose(0, 1)
        x = self.ln_final(x)
        eot = text.argmax(dim=-1)  # (B,) the EOT token has the largest id
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection  # (B, embed)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities, (images, texts) and (texts, images)."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()
