"""One adapter per model family: where a transformers model keeps what faithclip reads.

The probe and the methods are family-agnostic; everything that differs between CLIP, SigLIP, BLIP and
ViT classifiers is declared here, once per family (transformers' own pattern: each architecture declares
its parts):

    towers            which sides exist: ``{"image": "vision", "text": "text"}`` (a classifier: image only)
    blocks            the encoder blocks of a tower, in forward order
    attention         one block's attention parts: the module that returns the probabilities, q/k/v
                      projections (or one fused qkv projection), the output projection, the head count
    prefix_tokens     tokens before the patch tokens on the image side (CLS: 1; DeiT CLS + distillation: 2)
    query_positions   the pooled token of each input (the class token, the end token, the last position)
    text_support      the text tokens a text map covers
    encode_*, score   the embeddings the model's score is computed from, and the score itself
    *_features        what a target's score reads of each side: the embeddings, or for a score that is not
                      a function of pooled embeddings (BLIP's ITM) the image tokens and the token batch
    tokenize          how the family's tokenizer lays texts out (padding, end token)
    pooling_attention an attention-pooling head whose learned query IS the pooled query of a tower
                      (SigLIP's image tower); ``None``: the pooled query is a token of the last block

A family is chosen from ``config.model_type`` (``family_for_model_type``) or from a model instance
(``family_of``). Adding a family is one module in this folder that subclasses ``Family`` and calls
``register_family``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from faithclip.errors import ModelError, ProbeError

if TYPE_CHECKING:
    from faithclip.models.text import TextBatch
    from faithclip.targets import Target


@dataclass(frozen=True)
class AttentionParts:
    """Where one block's attention lives. Either ``q``, ``k``, ``v`` (three projections) or ``qkv`` (one
    fused projection whose output is ``[q | k | v]`` along the last axis, each ``D`` wide) is set.

    ``module`` returns ``(output, probabilities)``; ``out`` is the output projection, whose INPUT is the
    attention output with heads concatenated (``attn_out``)."""

    module: torch.nn.Module
    out: torch.nn.Module
    heads: int
    q: torch.nn.Module | None = None
    k: torch.nn.Module | None = None
    v: torch.nn.Module | None = None
    qkv: torch.nn.Module | None = None

    def __post_init__(self) -> None:
        separate = all(p is not None for p in (self.q, self.k, self.v))
        if separate == (self.qkv is not None):
            raise ProbeError("an attention declares either q, k and v projections or one fused qkv projection.")


@dataclass(frozen=True)
class OfficialPipeline:
    """What the published Grad-ECLIP pipeline (github.com/Cyang-Zhao/Grad-Eclip) is for a family, for
    ``grad_eclip_official`` and the audit: the lambda q/k variants it publishes (the first is the one the
    audit's ``published`` arm uses), whether it has a text side, and the short-side cap of its keep-size
    input, and the module that computes its forward and maps. The defaults are CLIP's (``generate_emap.py``:
    out_proj q/k, a text side, the 640 px cap, ``methods/official/rewrite.py``)."""

    lambda_qk: tuple[str, ...] = ("out_proj", "raw")
    text: bool = True
    short_side_cap: int | None = 640
    #: the module of the family's rewritten forward: ``image_maps(ctx, pixels, layers, lambda_qk, model, heads)`` and
    #: ``image_embeds(model, pixels, heads)`` (named, not imported: methods sit above models)
    module: str = "faithclip.methods.official.rewrite"

    @property
    def pipeline(self) -> Any:
        import importlib

        return importlib.import_module(self.module)


@dataclass(frozen=True)
class PoolingAttention:
    """An attention-pooling head: a learned query attends to the tower's last hidden states ``x`` through one
    ``torch.nn.MultiheadAttention`` (fused ``in_proj_weight``, ``out_proj``). ``module`` is the head (its
    first input is ``x``), ``attention`` its ``MultiheadAttention`` (called with ``need_weights=True``: it
    returns the head-averaged probabilities), ``query`` the learned query ``(1, Tq, D)``. For methods the
    head is one more layer after the tower's blocks, whose only query row is the learned query's."""

    module: torch.nn.Module
    attention: torch.nn.MultiheadAttention
    query: torch.Tensor

    @property
    def heads(self) -> int:
        return int(self.attention.num_heads)


class Family:
    """The CLIP-style defaults; a family overrides what differs."""

    name = "family"
    model_types: tuple[str, ...] = ()
    towers: dict[str, str] = {"image": "vision", "text": "text"}
    #: the score names this family's models define (``faithclip.targets``), the first is the default
    target_kinds: tuple[str, ...] = ("cosine", "logit", "probability", "contrast")
    #: the image tower's last block is CLIP's (pre-norm, class token pooled through post_layernorm and a
    #: projection), so ``Context.last_layer_gradients`` may differentiate the class token's path alone
    fast_path = False
    #: the transformers class ``faithclip.load`` builds for a directory or hub id of this family
    model_class = "AutoModel"
    #: the published Grad-ECLIP pipeline for this family (``grad_eclip_official``, the audit); ``None``: none
    #: was published for it (the method is then not offered)
    official: OfficialPipeline | None = OfficialPipeline()
    #: the ``probability`` score is a softmax over a prompt set (CLIP: it needs the other prompts); a
    #: family whose probability is per pair (SigLIP's sigmoid) sets this False
    probability_over_prompts = True

    # ---- structure --------------------------------------------------------------------------------
    def tower_module(self, model: Any, tower: str) -> torch.nn.Module:
        """CLIP's layout: ``model.vision_model`` / ``model.text_model``."""
        self.check_tower(tower)
        return getattr(model, f"{tower}_model")

    def tower_config(self, model: Any, tower: str) -> Any:
        return getattr(model.config, f"{tower}_config")

    def blocks(self, model: Any, tower: str) -> Sequence[torch.nn.Module]:
        """CLIP's layout: ``<tower>_model.encoder.layers``."""
        self.check_tower(tower)
        layers = getattr(getattr(getattr(model, f"{tower}_model", None), "encoder", None), "layers", None)
        if layers is None:
            raise ProbeError(f"{type(model).__name__} has no {tower}_model.encoder.layers; is it a {self.name} model?")
        return layers

    def attention(self, block: torch.nn.Module) -> AttentionParts:
        raise NotImplementedError

    def input_module(self, model: Any, side: str) -> torch.nn.Module:
        """The module whose first input is the side's own input (pixels at the patch embedding, token ids at
        the token embedding): where ``faithclip.audit.detect`` sees what a method fed the model."""
        tower = self.tower_module(model, self.towers[side])
        return tower.embeddings.patch_embedding if side == "image" else tower.embeddings.token_embedding

    def embedding_module(self, model: Any, side: str) -> torch.nn.Module:
        """The last module of the side's own forward to the score: its output, on the model's own input, is
        what the score reads (CLIP: the two projections, whose outputs are ``encode_image`` / ``encode_text``)."""
        return model.visual_projection if side == "image" else model.text_projection

    def check_tower(self, tower: str) -> None:
        if tower not in self.towers.values():
            raise ProbeError(f"a {self.name} model has no {tower!r} tower; it has {', '.join(self.towers.values())}.")

    def has_side(self, side: str) -> bool:
        return side in self.towers

    def prefix_tokens(self, model: Any) -> int:
        """Tokens before the patch tokens in the image tower's sequence."""
        return 1

    def patch_size(self, model: Any) -> int:
        return int(self.tower_config(model, self.towers["image"]).patch_size)

    def image_size(self, model: Any) -> int:
        return int(self.tower_config(model, self.towers["image"]).image_size)

    def pooling_attention(self, model: Any, tower: str) -> PoolingAttention | None:
        """The tower's attention-pooling head, when its pooled query is a learned query rather than a token
        of the last block (``None``, the CLIP default)."""
        return None

    def attention_implementation(self, model: Any, tower: str) -> str:
        config = self.tower_config(model, tower)
        return getattr(config, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", "eager")

    def parameter(self, model: Any) -> torch.Tensor:
        """A parameter whose dtype and device are the model's."""
        return next(model.parameters())

    # ---- pooled queries and supports ----------------------------------------------------------------
    def query_positions(
        self, side: str, num_inputs: int, text: "TextBatch | None", device: torch.device
    ) -> torch.Tensor:
        """``(C,)``: the pooled token of each explained input."""
        if side == "image":
            return torch.zeros(num_inputs, dtype=torch.long, device=device)
        return text.eos_positions

    def text_support(self, model: Any, text: "TextBatch") -> torch.Tensor:
        """``(K, L)`` bool: the tokens a text map covers: strictly between the start and the end token (a
        family whose rule needs the model's config, e.g. its start token id, reads it from ``model``)."""
        positions = torch.arange(text.input_ids.shape[1], device=text.input_ids.device)
        return (positions[None, :] > 0) & (positions[None, :] < text.eos_positions[:, None])

    # ---- embeddings and the score -------------------------------------------------------------------
    def encode_image(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, model: Any, text: "TextBatch") -> torch.Tensor:
        raise NotImplementedError

    def logit_scale(self, model: Any) -> torch.Tensor:
        return model.logit_scale.exp()

    def image_features(self, model: Any, pixels: torch.Tensor, target: "Target") -> Any:
        """What ``target``'s score reads of the images: the embeddings ``encode_image`` for a pooled target
        (every target of this default). A family with a non-pooled score (BLIP's ITM) returns more here."""
        return self.encode_image(model, pixels)

    def text_features(self, model: Any, text: "TextBatch", target: "Target") -> Any:
        """What ``target``'s score reads of the texts (default: the embeddings ``encode_text``)."""
        return self.encode_text(model, text)

    def score(
        self,
        target: "Target",
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        model: Any,
        extra_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The target ``(B, K)`` from embeddings (CLIP's definitions, ``faithclip.targets``)."""
        return target.scores(image_embeds, text_embeds, self.logit_scale(model).detach(), extra_embeds)

    def check_target(self, target: "Target", model: Any = None) -> None:
        """Refuse, in one line, a target this family's models do not define (``model``, when given, is
        checked for the parts the target reads)."""
        from faithclip.errors import MethodError

        if target.kind not in self.target_kinds:
            owner = " (BLIP's image-text matching head)" if not target.pooled else ""
            raise MethodError(
                f"a {self.name} model has no {target.kind!r} score{owner}; choose from {', '.join(self.target_kinds)}."
            )
        if target.kind == "probability" and self.probability_over_prompts and not target.extra_texts:
            raise MethodError(
                "the probability target needs the other prompts of the set (e.g. others=['a dog', 'a car'])."
            )
        if target.kind == "probability" and not self.probability_over_prompts and target.extra_texts:
            raise MethodError(
                f"a {self.name} model's probability is per pair (a sigmoid of its logit) and uses no "
                f"other prompts, but {len(target.extra_texts)} were given; drop them."
            )

    @property
    def default_target_kind(self) -> str:
        """The score explained when none is named: the first of ``target_kinds`` (CLIP and BLIP: the cosine;
        SigLIP and a classifier: the logit). The one place this rule lives."""
        return self.target_kinds[0]

    def default_target(self, others: Sequence[str] = ()) -> "Target":
        """The default score (``default_target_kind``) as a ``Target``."""
        return self.target(self.default_target_kind, others)

    def target(self, kind: "str | Target", others: Sequence[str] = ()) -> "Target":
        """The named score with the other texts it needs (``faithclip.targets.make_target``); a family whose
        score needs no prompt set (a classifier's softmax runs over its classes) overrides this."""
        from faithclip.targets import make_target

        return make_target(kind, others)

    # ---- texts ----------------------------------------------------------------------------------------
    def tokenize(self, handle: Any, texts: list[str]) -> "TextBatch":
        """Strings -> the ``TextBatch`` the text tower reads (CLIP: the tokenizer, ``ModelHandle.tokenize_texts``).
        A classifier maps class names to class indices instead."""
        return handle.tokenize_texts(texts)

    def tokenizer_call(self, tokenizer: Any, texts: list[str], context_length: int) -> dict:
        """The tokenizer applied as the family's pipeline applies it: padded to the longest text."""
        return tokenizer(texts, padding=True, truncation=True, max_length=context_length, return_tensors="pt")

    def context_length(self, model: Any) -> int:
        return int(self.tower_config(model, self.towers["text"]).max_position_embeddings)

    def eos_token_id(self, model: Any) -> int | None:
        return getattr(self.tower_config(model, self.towers["text"]), "eos_token_id", None)

    def eos_positions(self, model: Any, input_ids: torch.Tensor) -> torch.Tensor:
        """The position the text tower pools, for each row."""
        eos = self.eos_token_id(model)
        hits = input_ids == eos
        if not hits.any(dim=-1).all():
            from faithclip.errors import TextError

            raise TextError(f"every token-id row must contain the end token id {eos}.")
        return hits.int().argmax(dim=-1)

    def lambda_context(self, handle: Any, text: "TextBatch") -> "TextBatch":
        """The texts laid out as the family's published pipeline pads them, for Grad-ECLIP's
        ``lambda_span="context"`` (CLIP: padded with id 0 to the context length, causal mask only)."""
        return handle.context_batch(text)

    def check_model(self, model: Any) -> None:
        """Raise ``ModelError`` unless ``model`` has the parts this family reads."""

    # ---- per-token readings (MaskCLIP, CLIP Surgery, LeGrad) ----------------------------------------------
    def token_head(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        """The image tower's head applied to every token, ``(B, T, D) -> (B, T, E)``: what the pooled token
        passes through to become the embedding the score reads (CLIP: ``visual_projection(post_layernorm(x))``,
        ``ClipFamily``). A family without one refuses the per-token methods in one line."""
        from faithclip.errors import MethodError

        raise MethodError(
            f"{self.name} models declare no per-token head, which MaskCLIP, CLIP Surgery and LeGrad "
            "apply to every token."
        )

    def block_mlp(self, block: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """A block's second half on its mid-block hidden state: ``h + MLP(LN_2(h))`` (CLIP's pre-norm block)."""
        return hidden + block.mlp(block.layer_norm2(hidden))

    # ---- evaluation over a labelled set (``faithclip evaluate``, ``faithclip.metrics``) ---------------
    def class_weights(self, handle: Any, texts: Sequence[Sequence[str]], batch_size: int = 256) -> torch.Tensor:
        """``(K, D)``: what stands for each class's texts in the score (``TextBatch.embeds``). CLIP's
        zero-shot rule (Radford et al. 2021): per class, the renormalised mean of its unit text embeddings."""
        import torch.nn.functional as F

        weights = []
        with torch.no_grad():
            for group in texts:
                group = list(group)
                embeds = torch.cat(
                    [
                        handle.encode_text(handle.tokens(group[i : i + batch_size]))
                        for i in range(0, len(group), batch_size)
                    ]
                )  # (T, D)
                weights.append(F.normalize(F.normalize(embeds, dim=-1).mean(0), dim=-1))
        return torch.stack(weights)  # (K, D)

    def check_class_names(self, model: Any, names: Sequence[str]) -> None:
        """Raise ``ModelError`` unless the data set's class names can be scored by this family (a contrastive
        model scores any text; a classifier only its own classes)."""

    def class_logits(self, model: Any, scores: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` logits of the default score ``scores`` over the data set's classes: their argmax is the
        prediction, ``label_probability`` reads the label's probability from them. CLIP:
        ``exp(logit_scale) * cosine``."""
        return self.logit_scale(model).detach() * scores

    def label_probability(self, logits: torch.Tensor, label: int) -> torch.Tensor:
        """``(N,)`` the label's probability from ``class_logits`` (float64). CLIP: the softmax over the
        data set's prompts."""
        return logits.double().softmax(-1)[:, label]

    #: metrics (``faithclip.metrics`` names) whose quantity this family's score does not define: metric -> why
    refused_metrics: dict[str, str] = {}

    def cascade_blocks(self, model: Any) -> list[tuple[str, list[torch.nn.Module]]]:
        """The image side's parameters from the score down, as ``(name, modules)`` (the cascading
        randomisation of ``faithclip.metrics.sanity``). CLIP: the projection, ``post_layernorm``, the blocks
        from the last, then the embeddings with ``pre_layrnorm``."""
        vision = self.tower_module(model, "vision")
        top = [("visual_projection", [model.visual_projection]), ("post_layernorm", [vision.post_layernorm])]
        return top + self.block_cascade(model) + [("embeddings", [vision.embeddings, vision.pre_layrnorm])]

    def block_cascade(self, model: Any) -> list[tuple[str, list[torch.nn.Module]]]:
        layers = list(self.blocks(model, "vision"))
        return [(f"layer {index}", [layers[index]]) for index in reversed(range(len(layers)))]

    def default_preprocess(self, model: Any) -> Any:
        """The preprocessing when no processor config comes with the model: transformers' CLIP rules at
        the model's input size (a family whose processor differs overrides this)."""
        from faithclip.models.preprocess import ImagePreprocess

        return ImagePreprocess.for_pipeline("transformers", self.image_size(model))


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def family_for_model_type(model_type: str | None, where: str = "the model") -> Family:
    """The family whose models have ``config.model_type == model_type``; a one-line error otherwise."""
    _load_families()
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(f"{t!r} ({f.name})" for f in FAMILIES.values() for t in f.model_types)
    raise ModelError(
        f"{where} is a {model_type!r} model, which faithclip does not support; supported model types: {known}."
    )


def family_of(model: Any) -> Family:
    """The family of a model instance, from its config's ``model_type``."""
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(
            f"{type(model).__name__} has no transformers config; load a transformers model "
            "(faithclip.load or from_pretrained)."
        )
    family = family_for_model_type(getattr(config, "model_type", None), type(model).__name__)
    family.check_model(model)
    return family


@functools.cache
def _load_families() -> None:
    """Import every module of this folder, once per process (the folder is not re-listed by later calls:
    ``family_of`` runs on every probe): each registers its family."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


__all__ = [
    "AttentionParts",
    "PoolingAttention",
    "Family",
    "OfficialPipeline",
    "FAMILIES",
    "register_family",
    "family_for_model_type",
    "family_of",
]
