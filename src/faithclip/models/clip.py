"""``ModelHandle``: a transformers model of a supported family (CLIP, SigLIP, BLIP, ViT classifiers) with its
tokenizer, preprocessing and identity. ``ClipHandle``, its first name, is a deprecated alias (next release: gone).

What differs between families (where the towers are, how texts are laid out, how the score is computed)
is asked of ``family`` (``faithclip.models.families``).

It turns the user's inputs (PIL images, paths or normalised pixel tensors; strings or token-id tensors)
into the exact tensors the model predicts from, and encodes them. It never changes the model.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from faithclip.deprecation import deprecated_names
from faithclip.errors import ImageError, TextError
from faithclip.models.families import Family, family_of
from faithclip.models.images import decode_image, to_rgb
from faithclip.models.preprocess import ImagePreprocess
from faithclip.models.text import TextBatch  # noqa: F401  (re-exported: a handle's texts)

logger = logging.getLogger(__name__)

ImageInput = Image.Image | str | Path | torch.Tensor
TextInput = str | torch.Tensor


@dataclass
class ModelHandle:
    """A model of a supported family (CLIP, SigLIP, BLIP, a ViT classifier) ready to be explained.

    ``model`` is the user's transformers model (``CLIPModel``, ``SiglipModel``, ...; never modified); ``tokenizer`` may be ``None``
    when texts are given as token ids; ``preprocess`` is the model's standard image preprocessing, with the
    rules of the pipeline the checkpoint was published with (``preprocess_rules``).
    """

    model: Any
    tokenizer: Any = None
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)
    name: str = "clip"
    family: Family | None = None  # None: read from the model's config (``family_of``)
    # trained on the shapes world: a directory written by ``faithclip train-shapes`` (the shipped stand-ins
    # among them), which holds its TRAINING.json; set by the loader
    trained_on_shapes: bool = False

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = family_of(self.model)

    # ---- identity -------------------------------------------------------------------------------
    @property
    def vision_config(self):
        return self.family.tower_config(self.model, "vision")

    @property
    def text_config(self):
        return self.family.tower_config(self.model, "text")

    @property
    def image_size(self) -> int:
        return self.family.image_size(self.model)

    @property
    def patch_size(self) -> int:
        return self.family.patch_size(self.model)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens in the image tower (a class token: 1)."""
        return self.family.prefix_tokens(self.model)

    @property
    def preprocess_rules(self) -> dict[str, str]:
        """Which pipeline's rules build this model's input (``"pipeline"``: transformers, openai or custom)
        and the rules themselves: crop-offset rounding, resize rounding, RGB conversion, EXIF orientation."""
        return {"pipeline": self.preprocess.pipeline, **self.preprocess.rules}

    @property
    def context_length(self) -> int:
        return self.family.context_length(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return self.family.parameter(self.model).dtype

    @property
    def device(self) -> torch.device:
        return self.family.parameter(self.model).device

    # ---- images ---------------------------------------------------------------------------------
    def pixels(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Normalised pixels ``(B, 3, H, W)`` in the model's dtype, from one input or a list of them.

        Tensors are taken as already normalised (``(3, H, W)`` or ``(B, 3, H, W)``) and used as they are.
        """
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != 3:
                raise ImageError(f"pixel tensors must be (B, 3, H, W) or (3, H, W); got {tuple(images.shape)}.")
            if tuple(batch.shape[-2:]) != (self.image_size, self.image_size):
                raise ImageError(
                    f"pixel tensors must be {self.image_size}x{self.image_size} (the model's input); got "
                    f"{tuple(batch.shape[-2:])}. Pass a PIL image or path to use the model's own preprocessing."
                )
            if not torch.isfinite(batch).all():
                raise ImageError("the pixel tensor holds NaN or infinite values.")
            return batch.to(device=self.device, dtype=self.dtype)
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        tensors = [self.preprocess(self.decoded(image)) for image in images]
        if not tensors:
            raise ImageError("no image given.")
        return torch.stack(tensors).to(device=self.device, dtype=self.dtype)

    def read(self, image: ImageInput) -> tuple[Image.Image, dict | None]:
        """A PIL image as given, or a path decoded in its own mode, under the pipeline's EXIF-orientation
        rule (``preprocess.exif_orientation``), and what was done with the orientation tag (``None``: no
        tag). The image is not yet RGB: ``preprocess`` converts it under its own rule (OpenAI's pipeline
        converts after resizing, transformers' before)."""
        if isinstance(image, (str, Path)):
            image = decode_image(image)
        elif not isinstance(image, Image.Image):
            raise ImageError(f"expected a PIL image, a path or a pixel tensor; got {type(image).__name__}.")
        return self.preprocess.orient(image)

    def decoded(self, image: ImageInput) -> Image.Image:
        """``read`` without the orientation record."""
        return self.read(image)[0]

    def rgb(self, image: ImageInput) -> Image.Image:
        """An RGB PIL image (upright when the pipeline applies EXIF orientation) from a path or PIL image."""
        return to_rgb(self.decoded(image), name=str(image) if isinstance(image, (str, Path)) else "image")

    # ---- texts ----------------------------------------------------------------------------------
    def tokens(self, texts: TextInput | Sequence[str]) -> TextBatch:
        """Tokenise strings (or accept token ids ``(K, L)``) as the model's family lays texts out
        (``Family.tokenize``; CLIP: ``tokenize_texts``)."""
        if isinstance(texts, TextBatch):
            return texts
        return self.family.tokenize(self, texts)

    def tokenize_texts(self, texts: TextInput | Sequence[str]) -> TextBatch:
        """Tokenise strings (or accept token ids ``(K, L)``), padded to the longest, truncated to the context."""
        if isinstance(texts, torch.Tensor):
            return self._ids_batch(texts)
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise TextError("no text given.")
        for text in texts:
            if not isinstance(text, str):
                raise TextError(f"texts must be strings or a token-id tensor; got {type(text).__name__}.")
            if not text.strip():
                raise TextError("empty text: give the words to explain, e.g. --text 'a photo of a cat'.")
        if self.tokenizer is None:
            raise TextError("this model has no tokenizer; pass token ids as a (K, L) tensor or load a tokenizer.")
        full = self.tokenizer(texts, truncation=False)["input_ids"]
        truncated = [len(ids) > self.context_length for ids in full]
        for text, cut in zip(texts, truncated):
            if cut:
                warnings.warn(
                    f"text truncated to the model's context of {self.context_length} tokens: {text[:60]!r}...",
                    stacklevel=3,
                )
        encoded = self.family.tokenizer_call(self.tokenizer, texts, self.context_length)
        input_ids = encoded["input_ids"]
        if any(truncated):
            # Truncation cuts the end token; put it back so the model pools where it was trained to.
            eos_id = self._eos_token_id()
            for row, cut in enumerate(truncated):
                if cut:
                    input_ids[row, -1] = eos_id
        batch = self._ids_batch(input_ids, encoded.get("attention_mask"))
        batch.texts = texts
        batch.tokens = [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
        batch.truncated = truncated
        batch.unknown = self._unknown_words(texts, input_ids)
        return batch

    def _unknown_words(self, texts: list[str], input_ids: torch.Tensor) -> list[list[str]]:
        """Per text, the words the tokenizer replaced by its unknown token. Empty when the tokenizer has no
        unknown token of its own (CLIP's byte-level BPE: its ``unk_token`` is the end token, and it
        never needs it)."""
        tokenizer = self.tokenizer
        unk = getattr(tokenizer, "unk_token_id", None)
        specials = {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        if unk is None or unk in specials:
            return [[] for _ in texts]
        hits = [(input_ids[row] == unk).nonzero().flatten().tolist() for row in range(len(texts))]
        if not any(hits):
            return [[] for _ in texts]
        if not getattr(tokenizer, "is_fast", False):  # no offsets: name the token, not the word
            return [[str(tokenizer.unk_token)] * len(rows) for rows in hits]
        offsets = tokenizer(texts, truncation=True, max_length=self.context_length, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        return [
            [text[offsets[row][p][0] : offsets[row][p][1]] for p in rows if p < len(offsets[row])]
            for row, (text, rows) in enumerate(zip(texts, hits))
        ]

    def prompts(self, texts: TextInput | Sequence[str], batch_size: int = 256) -> TextBatch:
        """Tokenise and encode prompts once, to explain many images against them (e.g. 1,000 class names)."""
        batch = self.tokens(texts)
        chunks = []
        with torch.no_grad():
            for start in range(0, batch.input_ids.shape[0], batch_size):
                part = TextBatch(
                    batch.input_ids[start : start + batch_size],
                    batch.attention_mask[start : start + batch_size],
                    batch.eos_positions[start : start + batch_size],
                    [],
                    [],
                )
                chunks.append(self.encode_text(part))
        batch.embeds = torch.cat(chunks)
        return batch

    def context_batch(self, text: TextBatch, pad_id: int = 0) -> TextBatch:
        """The texts as the published OpenAI pipeline feeds them: each row up to its end token, then
        ``pad_id`` (0, as ``clip.tokenize`` and open_clip pad) up to the model's context length, attention
        mask all ones (the causal mask only). ``(K, L)`` -> ``(K, context_length)``."""
        ids = text.input_ids
        padded = torch.full((ids.shape[0], self.context_length), pad_id, dtype=ids.dtype, device=ids.device)
        for row, eos in enumerate(text.eos_positions.tolist()):
            padded[row, : eos + 1] = ids[row, : eos + 1]
        return TextBatch(
            padded,
            torch.ones_like(padded),
            text.eos_positions.clone(),
            list(text.texts),
            list(text.tokens),
            list(text.truncated),
        )

    def _eos_token_id(self) -> int:
        return int(self.family.eos_token_id(self.model))

    def _ids_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextBatch:
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise TextError(
                f"token ids must be an integer tensor (K, L); got {tuple(input_ids.shape)} {input_ids.dtype}."
            )
        if input_ids.shape[1] > self.context_length:
            raise TextError(f"token ids are {input_ids.shape[1]} long; the model's context is {self.context_length}.")
        input_ids = input_ids.long().to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = self.eos_positions(input_ids)
        return TextBatch(
            input_ids=input_ids,
            attention_mask=attention_mask.to(self.device),
            eos_positions=eos,
            texts=[None] * input_ids.shape[0],
            tokens=[None] * input_ids.shape[0],
            truncated=[False] * input_ids.shape[0],
        )

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The position the text tower pools, for each row: the family's exact rule."""
        return self.family.eos_positions(self.model, input_ids)

    # ---- encoders -------------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, D)`` the score is computed from, exactly as the model computes them
        (CLIP: ``get_image_features``, projected, not normalised)."""
        return self.family.encode_image(self.model, pixels)

    def encode_text(self, text: TextBatch) -> torch.Tensor:
        """Text embeddings ``(K, D)`` the score is computed from (CLIP: ``get_text_features``)."""
        return self.family.encode_text(self.model, text)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.family.logit_scale(self.model)


__getattr__ = deprecated_names(__name__, {"ClipHandle": ("ModelHandle", ModelHandle)})


def check_is_clip(model: Any) -> None:
    """Raise ``ModelError`` unless ``model`` is a model of a supported family with the parts it reads
    (the name is historical: every family is checked)."""
    family_of(model)
