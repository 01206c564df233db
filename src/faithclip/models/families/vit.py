"""ViT image classifiers: ``transformers.ViTForImageClassification`` (model_type ``vit``) and
``DeiTForImageClassification`` (``deit``).

Image tower only: ``<backbone>.layers`` (backbone ``vit`` or ``deit``), pre-norm blocks whose
``attention`` holds ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` and returns ``(output, probabilities)``
(transformers 5). The sequence is ``[CLS, patches]`` (ViT) or ``[CLS, distillation, patches]`` (DeiT:
two prefix tokens); the final LayerNorm's class token is what the classifier reads, so the pooled
query is the class token in both. ``DeiTForImageClassificationWithTeacher`` (logits = the mean of a CLS
head and a distillation head) is refused: its score has two pooled tokens.

The "texts" of a classifier are its class names: ``tokenize`` maps each to its class index
(``TextBatch.input_ids`` ``(K, 1)``). ``encode_image`` is the final-LayerNormed class token, ``encode_text``
the class rows ``[W_k | b_k]`` of the classifier. Scores (``target_kinds``, the first the default):

    logit        W_k . f + b_k: the model's own ``logits[:, k]``, bit for bit (the classifier is applied
                 to all classes exactly as the model's forward does, and column k is read)
    probability  softmax over ALL classes, entry k
    contrast     logit_k - logit_k'   for one other class k'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from faithclip.errors import MethodError, ModelError, ProbeError, TextError
from faithclip.models.families import AttentionParts, Family, OfficialPipeline, register_family
from faithclip.targets import Target, accumulation_dtype

CLASSIFIER_KINDS = ("logit", "probability", "contrast")


@dataclass(frozen=True)
class ClassTarget(Target):
    """A classifier's score: needs no prompt set (its softmax runs over all classes); ``contrast`` names
    the one other class."""

    def __post_init__(self) -> None:
        if self.kind not in CLASSIFIER_KINDS:
            raise MethodError(f"a classifier has no {self.kind!r} score; choose from {', '.join(CLASSIFIER_KINDS)}.")
        if self.kind == "contrast" and len(self.extra_texts) != 1:
            raise MethodError("the contrast target needs exactly one other class name (e.g. others=['dog']).")
        if self.kind != "contrast" and self.extra_texts:
            raise MethodError(
                f"a classifier's {self.kind} needs no other texts (the probability is a softmax over "
                "all its classes); drop them."
            )


class ViTFamily(Family):
    name = "vit"
    model_types = ("vit",)
    towers = {"image": "vision"}
    target_kinds = CLASSIFIER_KINDS
    probability_over_prompts = False  # a softmax over the classifier's own classes: no prompt set
    model_class = "ViTForImageClassification"
    backbone = "vit"
    #: the published ViT notebook: raw q/k in lambda, no text side, no short-side cap
    official = OfficialPipeline(
        lambda_qk=("raw",), text=False, short_side_cap=None, module="faithclip.methods.official.vit"
    )

    # ---- structure --------------------------------------------------------------------------------
    def tower_module(self, model: Any, tower: str) -> torch.nn.Module:
        self.check_tower(tower)
        return getattr(model, self.backbone)

    def tower_config(self, model: Any, tower: str) -> Any:
        self.check_tower(tower)
        return model.config

    def blocks(self, model: Any, tower: str) -> Sequence[torch.nn.Module]:
        layers = getattr(self.tower_module(model, tower), "layers", None)
        if layers is None:
            raise ProbeError(
                f"{type(model).__name__} has no {self.backbone}.layers; is it a transformers 5 {self.model_class}?"
            )
        return layers

    def attention(self, block: torch.nn.Module) -> AttentionParts:
        attention = block.attention
        return AttentionParts(
            module=attention,
            out=attention.o_proj,
            heads=int(attention.num_attention_heads),
            q=attention.q_proj,
            k=attention.k_proj,
            v=attention.v_proj,
        )

    def prefix_tokens(self, model: Any) -> int:
        return 1

    def input_module(self, model: Any, side: str) -> torch.nn.Module:
        self.check_tower(self.towers.get(side, side))
        return getattr(model, self.backbone).embeddings.patch_embeddings

    def embedding_module(self, model: Any, side: str) -> torch.nn.Module:
        """The classifier head: its logits are the score."""
        self.check_tower(self.towers.get(side, side))
        return model.classifier

    # ---- embeddings and the score -------------------------------------------------------------------
    def encode_image(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: the final-LayerNormed class token, what the classifier reads."""
        return getattr(model, self.backbone)(pixel_values=pixels).last_hidden_state[:, 0]

    def token_head(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        """The backbone's final LayerNorm: ``encode_image`` is the class token after it, and the classifier
        rows (the "texts") are applied by ``score``."""
        return getattr(model, self.backbone).layernorm(tokens)

    def block_mlp(self, block: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``h + MLP(layernorm_after(h))`` (transformers 5's pre-norm ``ViTLayer``)."""
        return hidden + block.mlp(block.layernorm_after(hidden))

    def encode_text(self, model: Any, text: Any) -> torch.Tensor:
        """``(K, D + 1)``: the classifier rows ``[W_k | b_k]`` of the K classes."""
        classes = text.input_ids[:, 0]
        return class_rows(model.classifier)[classes]

    def score(
        self,
        target: Target,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        model: Any,
        extra_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = model.classifier(image_embeds)  # (B, C): the model's own head on all classes
        chosen = class_logits(logits, image_embeds, text_embeds, model.classifier)  # (B, K)
        if target.kind == "logit":
            return chosen
        if target.kind == "contrast":
            return chosen - class_logits(logits, image_embeds, extra_embeds, model.classifier)  # (B, K) - (B, 1)
        classes = class_indices(text_embeds, model.classifier)
        if classes is None:
            raise MethodError("the probability target needs the model's own class rows (encode_text).")
        return logits.to(accumulation_dtype(logits.dtype)).softmax(dim=-1)[:, classes]  # (B, K)

    def target(self, kind: str | Target, others: Sequence[str] = ()) -> Target:
        if isinstance(kind, Target):
            return kind if isinstance(kind, ClassTarget) else ClassTarget(kind.kind, kind.extra_texts)
        return ClassTarget(kind=kind, extra_texts=tuple(others))

    # ---- texts: class names -------------------------------------------------------------------------
    def tokenize(self, handle: Any, texts: Any) -> Any:
        from faithclip.models.text import TextBatch

        labels = class_names(handle.model)
        if isinstance(texts, torch.Tensor):
            ids = texts.reshape(-1).long()
            if texts.is_floating_point() or not ids.numel() or int(ids.min()) < 0 or int(ids.max()) >= len(labels):
                raise TextError(f"class ids must be integers in 0..{len(labels) - 1}; got {texts.tolist()}.")
            names = [labels[int(i)] for i in ids]
            given: list[str | None] = list(names)
        else:
            given = [texts] if isinstance(texts, str) else list(texts)
            if not given:
                raise TextError("no class name given.")
            ids = torch.tensor([class_index(labels, text) for text in given], dtype=torch.long)
        ids = ids.to(handle.device)
        return TextBatch(
            input_ids=ids[:, None],
            attention_mask=torch.ones_like(ids[:, None]),
            eos_positions=torch.zeros_like(ids),
            texts=given,
            tokens=[[labels[int(i)]] for i in ids],
            truncated=[False] * len(ids),
        )

    def context_length(self, model: Any) -> int:
        return 1

    # ---- evaluation over a labelled set ---------------------------------------------------------------
    def class_weights(self, handle: Any, texts: Sequence[Sequence[str]], batch_size: int = 256) -> torch.Tensor:
        """``(K, D + 1)``: the classifier's rows of the classes (each group's first text is the class name)."""
        return self.encode_text(handle.model, handle.tokens([group[0] for group in texts])).detach()

    def check_class_names(self, model: Any, names: Sequence[str]) -> None:
        """The data set's classes must be exactly the classifier's ``id2label`` (in any order): the label
        probability is the softmax over all of the model's classes."""
        labels = class_names(model)
        try:
            found = {class_index(labels, name) for name in names}
        except TextError as error:
            raise ModelError(f"the data's class names must be this classifier's id2label labels: {error}") from None
        if len(found) != len(labels) or len(names) != len(labels):
            raise ModelError(
                f"the data set has {len(names)} classes, naming {len(found)} of this classifier's "
                f"{len(labels)}: its classes must be the classifier's id2label labels, each once, so that "
                "the label probability is the model's own softmax."
            )

    def class_logits(self, model: Any, scores: torch.Tensor) -> torch.Tensor:
        return scores  # the default score is the class logit itself

    def cascade_blocks(self, model: Any) -> list[tuple[str, list[torch.nn.Module]]]:
        backbone = getattr(model, self.backbone)
        return (
            [("classifier", [model.classifier]), ("layernorm", [backbone.layernorm])]
            + self.block_cascade(model)
            + [("embeddings", [backbone.embeddings])]
        )

    # ---- checks and preprocessing -------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        architectures = getattr(model.config, "architectures", None) or []
        if "WithTeacher" in type(model).__name__ or any("WithTeacher" in a for a in architectures):
            raise ModelError(
                "DeiTForImageClassificationWithTeacher is not supported: its logits average a CLS head "
                "and a distillation head (two pooled tokens); use a DeiTForImageClassification."
            )
        if not hasattr(model, self.backbone) or not isinstance(getattr(model, "classifier", None), torch.nn.Linear):
            raise ModelError(
                f"{type(model).__name__} is not a {self.model_class} with a linear classifier; load "
                f"one with faithclip.load(...) or transformers.{self.model_class}.from_pretrained(...)."
            )

    def default_preprocess(self, model: Any) -> Any:
        """``ViTImageProcessor``'s defaults: bilinear resize to ``size x size`` (no crop), mean = std = 0.5."""
        from faithclip.models.preprocess import ImagePreprocess

        size = self.image_size(model)
        return ImagePreprocess(
            size=size,
            crop_height=size,
            crop_width=size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resample=2,
            resize="exact",
            center_crop=False,
        )


class DeiTFamily(ViTFamily):
    """DeiT: ViT's blocks and head under ``deit``, with a distillation token after the class token."""

    name = "deit"
    model_types = ("deit",)
    model_class = "DeiTForImageClassification"
    backbone = "deit"
    official = None  # the published notebook is ViT's

    def prefix_tokens(self, model: Any) -> int:
        return 2

    def default_preprocess(self, model: Any) -> Any:
        """``DeiTImageProcessor``'s defaults: bicubic resize to 256 x 256 (at 224: size * 8 / 7), centre crop
        to the model's input, ImageNet mean and std."""
        from faithclip.models.preprocess import ImagePreprocess

        size = self.image_size(model)
        return ImagePreprocess(
            size=size * 8 // 7,
            crop_height=size,
            crop_width=size,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            resample=3,
            resize="exact",
            center_crop=True,
        )


def class_names(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def class_index(labels: list[str], text: str) -> int:
    """The class a name denotes: an ``id2label`` value (case and surrounding spaces ignored), or one of the
    comma-separated synonyms of exactly one value (ImageNet's "tabby, tabby cat")."""
    if not isinstance(text, str) or not text.strip():
        raise TextError("a class name must be a non-empty string, e.g. --text 'tabby cat'.")
    key = " ".join(text.lower().split())
    exact = [i for i, label in enumerate(labels) if " ".join(label.lower().split()) == key]
    if exact:
        return exact[0]
    synonyms = [i for i, label in enumerate(labels) if key in (s.strip() for s in label.lower().split(","))]
    if len(synonyms) == 1:
        return synonyms[0]
    if synonyms:
        raise TextError(
            f"{text!r} names {len(synonyms)} classes ({'; '.join(repr(labels[i]) for i in synonyms)}); "
            "give the full label."
        )
    close = difflib.get_close_matches(key, [label.lower() for label in labels], n=3, cutoff=0.5)
    hint = f"close matches: {', '.join(repr(c) for c in close)}" if close else f"e.g. {labels[0]!r}"
    raise TextError(f"{text!r} is not a class of this model ({len(labels)} classes; {hint}).")


def class_rows(classifier: torch.nn.Linear) -> torch.Tensor:
    """``(C, D + 1)``: every class's weight row with its bias appended."""
    bias = classifier.bias if classifier.bias is not None else classifier.weight.new_zeros(classifier.out_features)
    return torch.cat([classifier.weight, bias[:, None]], dim=1)


def class_indices(rows: torch.Tensor, classifier: torch.nn.Linear) -> torch.Tensor | None:
    """Which class each row ``[W_k | b_k]`` is (``None`` when a row is not exactly one of the classifier's)."""
    table = class_rows(classifier).detach()
    found = []
    for row in rows.detach():
        hits = (table == row.to(table.dtype)).all(dim=-1).nonzero()
        if not len(hits):
            return None
        found.append(int(hits[0]))
    return torch.tensor(found, dtype=torch.long, device=rows.device)


def class_logits(
    logits: torch.Tensor, features: torch.Tensor, rows: torch.Tensor, classifier: torch.nn.Linear
) -> torch.Tensor:
    """``(B, K)`` logits of the classes whose rows are given: columns of the model's own ``logits`` when the
    rows are the classifier's (bit-identical to the model), else ``W_k . f + b_k`` from the rows."""
    classes = class_indices(rows, classifier)
    if classes is not None:
        return logits[:, classes]
    return F.linear(features, rows[:, :-1].to(features.dtype), rows[:, -1].to(features.dtype))


VIT = register_family(ViTFamily())
DEIT = register_family(DeiTFamily())
