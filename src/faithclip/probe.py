"""The probe: the ONE place that reads a model's internals.

``Probe`` is a reversible context manager. It registers forward hooks on the chosen encoder layers of
one tower and records, per layer (all tensors keep their autograd graph, so gradients can be taken):

    name        tensor                                                  shape
    hidden_in   input of the block (residual stream)                    (B, T, D)
    q, k, v     query, key, value projections, before head split        (B, T, D)
    attn        attention probabilities, per head                       (B, H, T, T)
    attn_out    attention output before out_proj (heads concatenated)   (B, T, D)
    hidden_out  output of the block                                     (B, T, D)

Where those tensors live is the model family's declaration (``faithclip.models.families``): the blocks
of each tower and, per block, the attention module, its q/k/v projections (or one fused qkv projection,
whose output the probe slices into ``[q | k | v]``: slicing makes views, the graph is kept) and its
output projection. The probe itself holds no family-specific code.

It never replaces a forward and never changes a value: outputs under the probe are bit-identical to
the untouched model's. Two optional, explicit, fully restored adjustments exist:

- ``eval_mode=True`` (default) puts the model in eval mode for the duration (dropout off), because the
  model predicts in eval mode; the previous mode of every module is restored on exit.
- ``grad_from=i`` switches ``requires_grad`` off on all parameters and marks the INPUT of layer ``i`` as
  requiring grad, so the autograd graph starts at layer ``i``: layers below run without building a graph.
  Every parameter's flag is restored on exit.

A tower whose family declares an attention-pooling head (``Family.pooling_attention``: SigLIP's image
tower) has one more layer index, ``len(blocks)``, for the head. ``torch.nn.MultiheadAttention`` computes
q, k, v and the probabilities inside one functional call, so the probe records there what the head's
``MultiheadAttention`` is given and returns: ``hidden_in`` its input ``x`` (B, T, D), ``hidden_out`` its
output ``y`` (B, Tq, D) and ``head_weights`` the head-averaged probabilities it returns (B, Tq, T).
q, k, v, the per-head probabilities and the attention output are then values computed from ``x`` and the
head's own parameters, checked against ``y`` and ``head_weights`` (``faithclip.methods.pooling``).

Hooks are removed in ``finally``, also when the forward raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from faithclip.deprecation import UNSET, RenamedAttribute, renamed_keyword
from faithclip.errors import ProbeError

CAPTURABLE = ("hidden_in", "q", "k", "v", "attn", "attn_out", "hidden_out")
TOWERS = ("vision", "text")
_LAST = (-1,)  # the default layer_indices: the last layer


@dataclass
class LayerCapture:
    """What the probe recorded at one encoder layer (``None`` where not requested)."""

    hidden_in: torch.Tensor | None = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    attn: torch.Tensor | None = None
    attn_out: torch.Tensor | None = None
    hidden_out: torch.Tensor | None = None
    head_weights: torch.Tensor | None = None  # an attention-pooling head's returned, head-averaged probabilities

    def require(self, *names: str) -> tuple[torch.Tensor, ...]:
        """The named tensors, raising if one was not captured (a probe configuration error)."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ProbeError(f"the probe did not capture {missing}; add them to `capture=`.")
        return tuple(getattr(self, n) for n in names)


def encoder_layers(model: Any, tower: str) -> Sequence[torch.nn.Module]:
    """The encoder blocks of one tower (``vision`` or ``text``), as the model's family declares them."""
    from faithclip.models.families import family_of

    if tower not in TOWERS:
        raise ProbeError(f"tower must be one of {TOWERS}, got {tower!r}.")
    return family_of(model).blocks(model, tower)


def resolve_layers(layer_indices: Iterable[int], num_layers: int) -> list[int]:
    """Normalise layer indices (negative counts from the end) and check their range; sorted, unique."""
    resolved = []
    for index in layer_indices:
        position = index + num_layers if index < 0 else index
        if not 0 <= position < num_layers:
            raise ProbeError(
                f"layer {index} does not exist; this tower has layers 0..{num_layers - 1} (or -1..-{num_layers})."
            )
        resolved.append(position)
    return sorted(set(resolved))


def has_hooks(model: Any) -> bool:
    """True when any module of ``model`` carries a forward hook (e.g. an intervention) at this moment."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def attention_implementation(model: Any, tower: str) -> str:
    from faithclip.models.families import family_of

    return family_of(model).attention_implementation(model, tower)


class Probe:
    """Capture internals of chosen layers of one tower while the model runs (see module docstring).

    >>> with Probe(model, "vision", layer_indices=[-1], capture=("q", "k", "attn")) as probe:
    ...     embeds = model.get_image_features(pixel_values=pixels).pooler_output
    >>> probe.captures[11].attn.shape   # (B, H, T, T)

    ``layer_indices``: the layers to capture (negative counts from the end). Its old name ``layers`` (a keyword
    and the attribute) is deprecated: ``layers`` is a count of last layers everywhere else.
    """

    layers = RenamedAttribute("Probe", "layer_indices")

    def __init__(
        self,
        model: Any,
        tower: str,
        layer_indices: Iterable[int] = _LAST,
        capture: Iterable[str] = CAPTURABLE,
        *,
        grad_from: int | None = None,
        eval_mode: bool = True,
        layers: Iterable[int] | None = None,
    ) -> None:
        from faithclip.models.families import family_of

        if layers is not None:  # the deprecated name of layer_indices
            given = UNSET if layer_indices is _LAST else list(layer_indices)
            layer_indices = renamed_keyword("Probe", "layers", "layer_indices", list(layers), given)

        self.model = model
        self.tower = tower
        self.family = family_of(model)
        self.blocks = encoder_layers(model, tower)
        self.pooling = self.family.pooling_attention(model, tower)  # its layer index: len(self.blocks)
        self.num_layers = len(self.blocks) + (self.pooling is not None)
        self.layer_indices = resolve_layers(layer_indices, self.num_layers)
        self.capture = tuple(capture)
        unknown = sorted(set(self.capture) - set(CAPTURABLE))
        if unknown:
            raise ProbeError(f"cannot capture {unknown}; choose from {CAPTURABLE}.")
        self.grad_from = None if grad_from is None else resolve_layers([grad_from], self.num_layers)[0]
        self.eval_mode = eval_mode
        self.captures: dict[int, LayerCapture] = {}
        self._handles: list[Any] = []
        self._saved_training: list[tuple[torch.nn.Module, bool]] = []
        self._saved_requires_grad: list[tuple[torch.nn.Parameter, bool]] = []

    # ---- context ------------------------------------------------------------------------------
    def __enter__(self) -> "Probe":
        if "attn" in self.capture and attention_implementation(self.model, self.tower) != "eager":
            raise ProbeError(
                f"the {self.tower} tower uses {attention_implementation(self.model, self.tower)!r} attention, "
                "which does not materialise attention probabilities. Load the model with "
                "attn_implementation='eager' (faithclip.load and faithclip.from_hf do this)."
            )
        try:
            self._adjust_model()
            self._register()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def clear(self) -> None:
        """Forget the captured tensors (hooks stay), e.g. between two forwards in one context."""
        self.captures = {}

    # ---- internals ----------------------------------------------------------------------------
    def _adjust_model(self) -> None:
        if self.eval_mode:
            self._saved_training = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
        if self.grad_from is not None:
            self._saved_requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)

    def _restore(self) -> None:
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles = []
            for module, mode in self._saved_training:
                module.training = mode
            for parameter, flag in self._saved_requires_grad:
                parameter.requires_grad_(flag)
            self._saved_training, self._saved_requires_grad = [], []

    def _slot(self, index: int) -> LayerCapture:
        return self.captures.setdefault(index, LayerCapture())

    def _register(self) -> None:
        wanted = set(self.capture)
        for index, block in enumerate(self.blocks):
            if index == self.grad_from:
                self._handles.append(block.register_forward_pre_hook(self._start_graph))
            if index not in self.layer_indices:
                continue
            parts = self.family.attention(block)
            if "hidden_in" in wanted:
                self._handles.append(block.register_forward_pre_hook(self._store_input(index, "hidden_in")))
            projections = wanted & {"q", "k", "v"}
            if parts.qkv is not None and projections:
                self._handles.append(parts.qkv.register_forward_hook(self._store_fused(index, projections)))
            elif projections:
                for name in sorted(projections):
                    module = getattr(parts, name)
                    self._handles.append(module.register_forward_hook(self._store_output(index, name)))
            if "attn" in wanted:
                self._handles.append(parts.module.register_forward_hook(self._store_attention(index)))
            if "attn_out" in wanted:
                self._handles.append(parts.out.register_forward_pre_hook(self._store_input(index, "attn_out")))
            if "hidden_out" in wanted:
                self._handles.append(block.register_forward_hook(self._store_output(index, "hidden_out")))
        head = len(self.blocks)
        if self.pooling is not None and head == self.grad_from:
            self._handles.append(self.pooling.module.register_forward_pre_hook(self._start_graph))
        if self.pooling is not None and head in self.layer_indices:
            self._handles.append(
                self.pooling.attention.register_forward_hook(self._store_pooling(head), with_kwargs=True)
            )

    @staticmethod
    def _start_graph(module: torch.nn.Module, args: tuple) -> None:
        hidden = args[0]
        if not hidden.requires_grad:
            if hidden.grad_fn is not None:  # cannot happen for a tensor that does not require grad
                raise ProbeError("internal: layer input has a graph but does not require grad.")
            if not torch.is_grad_enabled():
                raise ProbeError("grad_from needs gradients enabled; do not run the probe under torch.no_grad().")
            hidden.requires_grad_(True)  # marks the tensor only; its values are untouched

    def _store_input(self, index: int, name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            setattr(self._slot(index), name, args[0])

        return hook

    def _store_output(self, index: int, name: str):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            setattr(self._slot(index), name, output[0] if isinstance(output, tuple) else output)

        return hook

    def _store_fused(self, index: int, names: set[str]):
        """A fused projection's output ``(B, T, 3D)`` is ``[q | k | v]``: store the wanted thirds (views)."""

        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            width = output.shape[-1] // 3
            for position, name in enumerate(("q", "k", "v")):
                if name in names:
                    setattr(self._slot(index), name, output[..., position * width : (position + 1) * width])

        return hook

    def _store_pooling(self, index: int):
        """The pooling attention's key input ``x``, output ``y`` and returned head-averaged probabilities."""

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            key = args[1] if len(args) > 1 else kwargs.get("key")
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if key is None or weights is None:
                raise ProbeError(
                    f"{self.tower}: the attention-pooling head was not called as (query, key, value) with "
                    "need_weights=True; faithclip cannot read it."
                )
            slot = self._slot(index)
            slot.hidden_in, slot.hidden_out, slot.head_weights = key, output[0], weights

        return hook

    def _store_attention(self, index: int):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise ProbeError(
                    f"{self.tower} layer {index} did not return attention probabilities; the model must use "
                    "eager attention (attn_implementation='eager')."
                )
            self._slot(index).attn = weights  # (B, H, T, T)

        return hook


__all__ = ["Probe", "LayerCapture", "CAPTURABLE", "encoder_layers", "resolve_layers", "has_hooks"]
