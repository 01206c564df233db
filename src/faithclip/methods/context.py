"""What a method receives: the model, the exact inputs it predicted from, the target, and helpers.

A method asks the context for a probed forward of the model's OWN forward pass (``probe_forward``),
for gradients of the (B, K) scores (``grads``), and for the token layout of its side. Index
conventions, shared by every method:

- ``B`` images, ``K`` texts; every (image b, text k) pair gets a map; results are ``(B, K, ...)``.
- the explained tower's captures have a leading "capture batch" ``C``: ``C = B`` on the image side
  (texts are constants), ``C = K`` on the text side (images are constants).
- ``query_positions`` ``(C,)``: the token whose output is pooled: the class token (0) for images, the
  end-of-text token for each text (the family's rule).
- a tower whose family declares an attention-pooling head (SigLIP's image tower) has one more layer, the
  head (index ``num_layers - 1``): its pooled query is the head's learned query, the only row of its
  attention (``(C, H, 1, T)``, query position 0), attending to all T tokens; it is not a token, and the
  blocks below have no pooled query (``check_query_layers``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from faithclip.deprecation import renamed_fields
from faithclip.errors import MethodError
from faithclip.methods.pooling import attention_gradient_rows, check_agreement, pooling_internals
from faithclip.models.clip import ModelHandle, TextBatch
from faithclip.probe import LayerCapture, Probe, encoder_layers, has_hooks, resolve_layers
from faithclip.targets import Target

Reduce = Callable[[torch.Tensor], torch.Tensor]
logger = logging.getLogger(__name__)


@renamed_fields({"layers": "layer_indices"})
@dataclass
class MapResult:
    """A method's output before it is wrapped into ``Explanation`` objects. ``layer_indices``: the layers the
    maps were computed from (its old name ``layers`` is a deprecated keyword and attribute, the same list)."""

    maps: torch.Tensor  # image side (B, K, gh, gw); text side (B, K, L)
    scores: torch.Tensor  # (B, K): the values of the target the method explained
    layer_indices: list[int] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # (H, W) of the pixels the maps refer to


@dataclass
class Context:
    handle: ModelHandle
    side: str  # "image" or "text": which tower is explained
    pixels: torch.Tensor  # (B, 3, H, W) normalised, exactly what the model predicts from
    text: TextBatch  # K texts
    target: Target
    grad_chunk: int = 64  # scores differentiated together in one batched backward pass
    fast: bool = True  # allow the last-layer fast path of ``pooled_query_gradients``
    originals: list | None = None  # the user's images before preprocessing (PIL), when given as images or paths
    _fixed: dict = field(default_factory=dict)

    # ---- shapes ---------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return self.pixels.shape[0]

    @property
    def num_texts(self) -> int:
        return self.text.input_ids.shape[0]

    @property
    def tower(self) -> str:
        return "vision" if self.side == "image" else "text"

    @property
    def family(self):
        """The model family's declarations (``faithclip.models.families``)."""
        return self.handle.family

    @property
    def num_layers(self) -> int:
        """The explained tower's layers: its blocks, and its attention-pooling head when it has one."""
        return len(self.encoder_layers()) + (self.pooling is not None)

    @property
    def pooling(self):
        """The explained tower's attention-pooling head (``Family.pooling_attention``), or ``None``."""
        return self.family.pooling_attention(self.handle.model, self.tower)

    @property
    def head_layer(self) -> int | None:
        """The layer index of the attention-pooling head (the last), ``None`` without one."""
        return None if self.pooling is None else self.num_layers - 1

    def check_query_layers(self, layer_indices: Sequence[int], what: str) -> None:
        """A tower that pools through an attention-pooling head has a pooled query in the head only: ``what``
        (e.g. "layers=2") is refused with a one-line error for any other layer."""
        if self.head_layer is not None and any(index != self.head_layer for index in layer_indices):
            raise MethodError(
                f"{what} is not defined on the {self.tower} tower: it pools through its attention-pooling "
                "head, whose learned query is its only pooled query (its blocks have none); explain the "
                "head alone (layers=1, layer=-1)."
            )

    def query_one_hot(self, layer: int, tokens: int) -> torch.Tensor:
        """``(C, T)``: the pooled query as a token of layer ``layer`` (one-hot), or zeros for an
        attention-pooling head, whose learned query is not one of the T tokens."""
        one_hot = torch.nn.functional.one_hot(self.query_positions, tokens)
        if layer == self.head_layer:
            one_hot = torch.zeros_like(one_hot)
        return one_hot

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches on the image side (the class token: 1)."""
        return self.handle.prefix_tokens

    @property
    def num_tokens(self) -> int:
        """``T``: tokens of each explained input (prefix tokens + patches, or the batch's text length)."""
        if self.side == "image":
            return self.prefix_tokens + self.grid[0] * self.grid[1]
        return self.text.input_ids.shape[1]

    def encoder_layers(self) -> Sequence[torch.nn.Module]:
        """The explained tower's encoder blocks (read only, e.g. for a layer's output projection)."""
        return self.family.blocks(self.handle.model, self.tower)

    def output_projection(self, layer: int) -> torch.nn.Module:
        """The output projection of layer ``layer``'s attention (its input is ``attn_out``)."""
        if layer == self.head_layer:
            return self.pooling.attention.out_proj
        return self.family.attention(self.encoder_layers()[layer]).out

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` of the pixels."""
        patch = self.handle.patch_size
        return self.pixels.shape[-2] // patch, self.pixels.shape[-1] // patch

    @property
    def query_positions(self) -> torch.Tensor:
        """``(C,)``: the pooled token of each explained input (the family's rule)."""
        count = self.num_images if self.side == "image" else self.num_texts
        return self.family.query_positions(self.side, count, self.text, self.pixels.device)

    def last_layers(self, n: int) -> list[int]:
        """Indices of the last ``n`` encoder layers of the explained tower."""
        if not 1 <= n <= self.num_layers:
            raise MethodError(
                f"layers must be between 1 and {self.num_layers} (the {self.tower} tower's layers), got {n}."
            )
        return resolve_layers(range(-n, 0), self.num_layers)

    def support_mask(self) -> torch.Tensor:
        """``(C, T)`` bool: tokens a map covers: patch tokens (image); the family's text support (CLIP:
        tokens strictly between start and end)."""
        if self.side == "image":
            mask = torch.ones(self.num_images, self.num_tokens, dtype=torch.bool, device=self.pixels.device)
            mask[:, : self.prefix_tokens] = False
            return mask
        return self.family.text_support(self.handle.model, self.text)

    def pair(self, per_input: torch.Tensor) -> torch.Tensor:
        """Broadcast a ``(C, ...)`` tensor of the explained tower to ``(B or 1, K or 1, ...)``."""
        return per_input[:, None] if self.side == "image" else per_input[None, :]

    # ---- the model's own forward ----------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor):
        """What the target's score reads of ``pixels``: the image embeddings ``(N, D)`` (``encode_image``), or for
        a target that reads every image token (BLIP's ITM) the tower's last hidden state (``Family.image_features``)."""
        return self.family.image_features(self.handle.model, pixels, self.target)

    def text_features(self, text: TextBatch):
        """What the target's score reads of ``text``: the text embeddings ``(K, D)``, or the token batch itself for
        a score whose text forward reads the image (BLIP's ITM; ``Family.text_features``)."""
        return self.family.text_features(self.handle.model, text, self.target)

    def fixed_image_embeds(self) -> torch.Tensor:
        if "image" not in self._fixed:
            with torch.no_grad():
                self._fixed["image"] = self.image_features(self.pixels)
        return self._fixed["image"]

    def fixed_text_embeds(self) -> torch.Tensor:
        if "text" not in self._fixed and self.text.embeds is not None and self.target.pooled:
            self._fixed["text"] = self.text.embeds.to(device=self.pixels.device, dtype=self.pixels.dtype)
        if "text" not in self._fixed:
            with torch.no_grad():
                self._fixed["text"] = self.text_features(self.text)
        return self._fixed["text"]

    def extra_embeds(self) -> torch.Tensor | None:
        if not self.target.extra_texts:
            return None
        if "extra" not in self._fixed:
            with torch.no_grad():
                self._fixed["extra"] = self.handle.encode_text(self.handle.tokens(list(self.target.extra_texts)))
        return self._fixed["extra"]

    def score(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """The target ``(B, K)`` from embeddings, as the model's family defines it."""
        return self.family.score(self.target, image_embeds, text_embeds, self.handle.model, self.extra_embeds())

    def model_scores(self) -> torch.Tensor:
        """The model's own target values ``(B, K)`` for these inputs, without gradients."""
        with torch.no_grad():
            return self.score(self.fixed_image_embeds(), self.fixed_text_embeds())

    def score_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """The target ``(N, K)`` for ``N`` (perturbed) normalised images against all K texts, no gradients,
        in batches of ``batch_size`` forwards through the model's own image tower."""
        text_embeds = self.fixed_text_embeds()
        self.extra_embeds()
        chunks = []
        with torch.no_grad():
            for start in range(0, pixels.shape[0], batch_size):
                batch = pixels[start : start + batch_size].to(device=self.pixels.device, dtype=self.pixels.dtype)
                chunks.append(self.score(self.image_features(batch), text_embeds))
        return torch.cat(chunks)  # (N, K)

    def score_texts(self, text: TextBatch, batch_size: int = 256) -> torch.Tensor:
        """The target ``(B, N)`` of all B images against ``N`` (perturbed) texts, no gradients."""
        image_embeds = self.fixed_image_embeds()
        self.extra_embeds()
        chunks = []
        with torch.no_grad():
            for start in range(0, text.input_ids.shape[0], batch_size):
                part = TextBatch(
                    text.input_ids[start : start + batch_size],
                    text.attention_mask[start : start + batch_size],
                    text.eos_positions[start : start + batch_size],
                    [],
                    [],
                )
                chunks.append(self.score(image_embeds, self.text_features(part)))
        return torch.cat(chunks, dim=1)  # (B, N)

    def probe_forward(
        self, layer_indices: Sequence[int], capture: Sequence[str], grad_from: int | None = None
    ) -> tuple[torch.Tensor, dict[int, LayerCapture]]:
        """Run the model's own forward of the explained tower under the probe.

        Returns the scores ``(B, K)`` (with a graph from ``grad_from`` upward; default: the lowest of
        ``layer_indices``) and the captures per layer.
        """
        layer_indices = resolve_layers(layer_indices, self.num_layers)
        grad_from = min(layer_indices) if grad_from is None else grad_from
        self.extra_embeds()  # encode the target's extra prompts before the probe is active
        other = self.fixed_text_embeds() if self.side == "image" else self.fixed_image_embeds()
        own_forward = not has_hooks(self.handle.model)  # no intervention attached: the probe's forward is the model's
        with (
            torch.enable_grad(),
            Probe(self.handle.model, self.tower, layer_indices, capture, grad_from=grad_from) as probe,
        ):
            embeds = self.image_features(self.pixels) if self.side == "image" else self.text_features(self.text)
        # The probe leaves the forward bit-identical, so with no other hook attached these ARE the model's own
        # embeddings: keep them for the P1 comparison instead of running the model a second time.
        if own_forward:
            self._fixed.setdefault(self.side, embeds.detach())
        scores = self.score(embeds, other) if self.side == "image" else self.score(other, embeds)
        if self.head_layer in layer_indices:
            self._complete_head(probe.captures[self.head_layer])
        return scores, probe.captures

    def _complete_head(self, cap: LayerCapture) -> None:
        """Fill the attention-pooling head's q, k, v, attn and attn_out (values) from its captured input and
        its parameters, after checking them against the module's own output and returned probabilities."""
        x, y, weights = cap.require("hidden_in", "hidden_out", "head_weights")
        internals = pooling_internals(x.detach(), self.pooling)
        check_agreement(internals, y, weights)
        cap.q, cap.k, cap.v = internals.q, internals.k, internals.v
        cap.attn, cap.attn_out = internals.attn, internals.attn_out

    def context_captures(self, layer_indices: Sequence[int]) -> dict[int, LayerCapture]:
        """q and k (no graph) of the texts padded to the WHOLE context, as the published text code sees them.

        The family lays the texts out (``Family.lambda_context``); CLIP: padded with id 0 to the model's
        context length and run under the causal mask only (``ModelHandle.context_batch``). The end token's output, hence the score, is the same as on the
        model's own input (a causal model never looks ahead); only the keys of the padding positions are
        new, and they enter Grad-ECLIP's lambda through its min-max.
        """
        key = ("context", tuple(sorted(layer_indices)))
        if key not in self._fixed:
            padded = self.family.lambda_context(self.handle, self.text)
            with torch.no_grad(), Probe(self.handle.model, "text", layer_indices, ("q", "k")) as probe:
                self.handle.encode_text(padded)
            self._fixed[key] = probe.captures
        return self._fixed[key]

    def grads(
        self, scores: torch.Tensor, tensors: Sequence[torch.Tensor], reduce: Reduce | None = None
    ) -> list[torch.Tensor]:
        """Gradient of every score ``[b, k]`` w.r.t. each captured tensor of its own input.

        ``tensors`` are ``(C, ...)`` captures of the explained tower. ``reduce`` maps a stack of
        gradients ``(N, C, ...)`` to a smaller ``(N, C, ...)`` tensor (e.g. keep one attention row) so
        that K x full-size gradients are never held at once. Returns one ``(B, K, ...)`` tensor per input.
        Gradients for ``grad_chunk`` scores are computed in one batched backward pass (``is_grads_batched``).
        """
        num = self.num_texts if self.side == "image" else self.num_images
        outputs: list[list[torch.Tensor]] = [[] for _ in tensors]
        for start in range(0, num, self.grad_chunk):
            stop = min(start + self.grad_chunk, num)
            selector = torch.zeros(stop - start, *scores.shape, dtype=scores.dtype, device=scores.device)
            for row, index in enumerate(range(start, stop)):
                if self.side == "image":
                    selector[row, :, index] = 1  # score column k, all images
                else:
                    selector[row, index, :] = 1  # score row b, all texts
            gradients = torch.autograd.grad(
                scores, list(tensors), grad_outputs=selector, retain_graph=True, is_grads_batched=True
            )
            for slot, gradient in zip(outputs, gradients):
                slot.append(reduce(gradient) if reduce is not None else gradient)  # (N, C, ...)
        stacked = [torch.cat(slot, dim=0) for slot in outputs]  # (N_total, C, ...)
        return [s.transpose(0, 1) if self.side == "image" else s for s in stacked]  # (B, K, ...)

    def pooled_query_gradients(
        self, layer_indices: Sequence[int], wrt: str, capture: Sequence[str]
    ) -> tuple[torch.Tensor, dict[int, LayerCapture], list[torch.Tensor]]:
        """Scores ``(B, K)``, captures, and per explained layer the gradient of every score w.r.t. the
        pooled query's row of the attention probabilities (``wrt="attn"``: ``(B, K, H, T)``) or the pooled
        query's attention output before out_proj (``wrt="attn_out"``: ``(B, K, D)``).

        Image side, last layer only: the fast path (``last_layer_gradients``) runs the forward without any
        autograd graph and differentiates only the class token's path from that layer to the embedding.
        Otherwise: the model's forward with a graph from the lowest explained layer, and batched backward
        passes. Both give the same numbers (tests/unit/test_fast_path.py).
        """
        layer_indices = resolve_layers(layer_indices, self.num_layers)
        if self.head_layer is not None:
            self.check_query_layers(layer_indices, f"layers={len(layer_indices)}")
            return self.head_gradients(wrt, capture)
        fast = self.fast and self.family.fast_path and self.target.pooled  # the fast path rebuilds the pooled path
        if fast and self.side == "image" and layer_indices == [self.num_layers - 1]:
            result = self.last_layer_gradients(wrt, capture)
            if result is not None:
                return result
        positions = self.query_positions
        reduce = (lambda g: query_rows(g, positions)) if wrt == "attn" else (lambda g: query_tokens(g, positions))
        scores, caps = self.probe_forward(layer_indices, capture=tuple(set(capture) | {wrt}))
        return scores, caps, self.grads(scores, [caps[i].require(wrt)[0] for i in layer_indices], reduce=reduce)

    def head_gradients(
        self, wrt: str, capture: Sequence[str]
    ) -> tuple[torch.Tensor, dict[int, LayerCapture], list[torch.Tensor]]:
        """``pooled_query_gradients`` at an attention-pooling head: the model's own forward with a graph from
        the head's input, ``dS/dy`` at its query row by batched backward passes, then ``dS/do = dS/dy W_o``
        (``wrt="attn_out"``) and ``dS/dA^h_j = sum_{c in h} (dS/do)_c v_jc`` (``wrt="attn"``)."""
        head = self.head_layer
        scores, caps = self.probe_forward([head], capture=tuple(capture))
        cap = caps[head]
        (output_grad,) = self.grads(scores, [cap.hidden_out], reduce=lambda g: g[:, :, 0])  # (B, K, D)
        attn_out_grad, attn_grad = attention_gradient_rows(output_grad, cap.v, self.pooling, self.side)
        return scores, caps, [attn_grad if wrt == "attn" else attn_out_grad]

    def attention_gradients(
        self, scores: torch.Tensor, caps: dict[int, LayerCapture], layer_indices: Sequence[int]
    ) -> list[torch.Tensor]:
        """``dS/dA`` of every score for each of ``layer_indices`` (``(B, K, H, Tq, T)``); at an attention-pooling
        head by the chain rule from ``dS/dy`` (its probabilities are values, not on the graph)."""
        on_graph = [caps[i].attn if i != self.head_layer else caps[i].hidden_out for i in layer_indices]
        grads = self.grads(scores, on_graph)
        if self.head_layer in layer_indices:
            position = list(layer_indices).index(self.head_layer)
            _, rows = attention_gradient_rows(
                grads[position][:, :, 0], caps[self.head_layer].v, self.pooling, self.side
            )
            grads[position] = rows[:, :, :, None].to(grads[position].dtype)  # (B, K, H, 1, T), as the blocks' dS/dA
        return grads

    def last_layer_gradients(self, wrt: str, capture: Sequence[str]):
        """The fast path for the image tower's last layer (``None`` if the model's block is not CLIP's).

        The image embedding depends on the last layer's attention only through the class token:
        ``e = proj(LN_post(h + MLP(LN_2(h))))`` with ``h = x_cls + out_proj(o_cls)`` and
        ``o_cls = concat_h(A^h[0, :] v^h)``. The forward runs with no graph; this single-token path is then
        evaluated with the model's own modules on the captured ``x_cls`` and ``o_cls``, checked against the
        model's own embedding (and ``o_cls`` against the captured attention row times ``v``), and
        differentiated for all K scores in batched passes. For the attention probabilities the last step,
        the backward of ``A^h[0, :] v^h``, is one product for all K gradients.
        """
        last = self.num_layers - 1
        needed = tuple(set(capture) | {"hidden_in", "v", "attn_out", wrt})
        self.extra_embeds()
        text_embeds = self.fixed_text_embeds()
        own_forward = not has_hooks(self.handle.model)
        with torch.no_grad(), Probe(self.handle.model, "vision", [last], needed) as probe:
            embeds = self.handle.encode_image(self.pixels)
        if own_forward:
            self._fixed.setdefault("image", embeds)  # the model's own embeddings (the probe changes nothing)
        caps = probe.captures
        cap = caps[last]
        hidden_in, v, attn_out = cap.require("hidden_in", "v", "attn_out")
        x_cls, o = hidden_in[:, 0], attn_out[:, 0]  # (B, D): the class token's residual and attention output
        block = encoder_layers(self.handle.model, "vision")[last]
        family, model = self.family, self.handle.model

        def embed_from_output(o_cls: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, E)
            h = x_cls + family.attention(block).out(o_cls)
            return family.token_head(model, family.block_mlp(block, h))

        heads = cap.attn.shape[1] if cap.attn is not None else None

        def output_from_rows(rows: torch.Tensor) -> torch.Tensor:  # (B, H, T) -> (B, D)
            batch, tokens, width = v.shape
            v_heads = v.reshape(batch, tokens, heads, width // heads).transpose(1, 2)  # (B, H, T, d)
            return (rows[:, :, None, :] @ v_heads)[:, :, 0].reshape(batch, width)  # (B, H, 1, d) -> (B, D)

        with torch.enable_grad():
            # Differentiate with respect to the class token's attention output o_cls for all K scores ...
            variable = o.detach().clone().requires_grad_(True)  # (B, D)
            rebuilt = embed_from_output(variable)
            rows_agree = wrt != "attn" or self._agrees(output_from_rows(cap.attn[:, :, 0]), o)
            if not self._agrees(rebuilt.detach(), embeds) or not rows_agree:
                warnings.warn(
                    "the last vision block is not a standard CLIP block; using the full backward pass", stacklevel=3
                )
                return None
            scores = self.score(rebuilt, text_embeds)  # (B, K)
            grads = self.grads(scores, [variable])[0]  # (B, K, D)
        if wrt == "attn":
            # ... then through o_cls = concat_h(A^h[0, :] v^h): the backward of that product, applied once to
            # all K gradients, gives dS/dA^h[0, j] = sum_{c in h} (dS/do_cls)_c v_jc.
            batch, tokens, width = v.shape
            v_heads = v.reshape(batch, tokens, heads, width // heads).transpose(1, 2)  # (B, H, T, d)
            per_head = grads.reshape(batch, grads.shape[1], heads, width // heads)  # (B, K, H, d)
            grads = torch.einsum("bkhd,bhtd->bkht", per_head, v_heads)  # (B, K, H, T)
        model_scores = self.score(embeds, text_embeds)  # the model's own numbers are reported
        return model_scores, caps, [grads]

    @staticmethod
    def _agrees(rebuilt: torch.Tensor, reference: torch.Tensor) -> bool:
        tolerance = 1e-4 if reference.dtype in (torch.float16, torch.bfloat16) else 1e-5
        scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
        return bool(((rebuilt - reference).abs().max() / scale) <= tolerance)

    # ---- maps -----------------------------------------------------------------------------------
    def token_map(self, per_token: torch.Tensor) -> torch.Tensor:
        """``(B, K, T)`` per-token values -> image ``(B, K, gh, gw)`` (patch tokens) or text ``(B, K, L)``
        (zero outside the support)."""
        if self.side == "image":
            gh, gw = self.grid
            return per_token[..., self.prefix_tokens :].reshape(*per_token.shape[:2], gh, gw)  # (B, K, gh, gw)
        return torch.where(self.pair(self.support_mask()), per_token, torch.zeros_like(per_token))


def query_rows(attention_like: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, Tq, Tk)`` -> ``(N, C, H, Tk)``: the row of each input's query token."""
    rows = attention_like.transpose(2, 3)  # (N, C, Tq, H, Tk)
    index = torch.arange(rows.shape[1], device=rows.device)
    return rows[:, index, positions]  # (N, C, H, Tk)


def query_tokens(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(N, C, T, D)`` -> ``(N, C, D)``: each input's query token."""
    index = torch.arange(tokens.shape[1], device=tokens.device)
    return tokens[:, index, positions]
