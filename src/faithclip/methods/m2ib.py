"""M2IB (Wang et al., "Visual Explanations of Image-Text Representations via Multi-Modal Information
Bottleneck Attribution", NeurIPS 2023), after the official code (YingWANGG/M2IB, scripts/iba.py, methods.py).

The output X (``(T, D)``) of encoder layer ``layer`` of the explained tower is replaced by a noisy masked copy

    Z = lambda * X + (1 - lambda) * sqrt(variance) * eps,     lambda = sigmoid(alpha),  eps ~ N(0, 1)

and alpha (one value per token and channel, initialised to 5) is optimised with Adam (lr 1, ``steps``
steps, ``samples`` noise draws per step) to minimise

    beta * mean_{s,t,d} KL[ N(lambda X, (1-lambda)^2 variance) || N(0, variance) ]  -  mean_s target(Z_s)

where the target is the explained score of the pair (the cosine with the other tower's embedding by
default, as the paper). The map is the per-token capacity  sum_d KL_td  of the last step's forward
(official: ``buffer_capacity`` of the last training forward), patch tokens for images, tokens strictly
between start and end for texts. Raw nats; the official code min-max normalises for display. For texts
the compression mean runs over the tokens up to the end token (the official, unpadded, input), so
padding in a batch changes nothing.

Notes. The official code keeps ``variance`` in an estimator its bottleneck never reads, so its noise
variance is always 1; here ``variance`` is applied (``variance=1``, the default, is the official
computation). The official text wrapper drops the causal mask; here the model's own text forward runs.
One noise draw per step is shared by all (image, text) pairs, and texts draw noise for the full context
length (then keep their own positions), so every pair's map is independent of what else is in the batch. Layer default: 9 of 12, i.e. ``round(0.75 * L)``, capped at L - 2 so that a
block follows the bottleneck (on the 4-layer shapes model, layer 3 = the last block gave maps whose
maximum almost never fell on the named object; layer 2 does as well as Grad-ECLIP).

The replacement is an INTERVENTION (``bottleneck_intervention``): a forward hook that returns a modified
output, removed in ``finally``; it is not the probe, which never changes a value.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from faithclip.errors import MethodError
from faithclip.methods.context import Context, MapResult
from faithclip.models.clip import TextBatch
from faithclip.probe import encoder_layers, resolve_layers
from faithclip.registry import MethodSpec, register_method

INITIAL_ALPHA = 5.0


@contextmanager
def bottleneck_intervention(
    model, tower: str, layer: int, replace: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace the output hidden state of one encoder layer by ``replace(output)`` while inside.

    Reversible: the hook is removed, every module's training mode and every parameter's
    ``requires_grad`` flag restored in ``finally``. Inside, the model is in eval mode and its parameters
    do not require grad (only the intervention's own tensors are optimised).
    """
    block = encoder_layers(model, tower)[layer]
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]

    def hook(module: torch.nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        return replace(output)

    handle = None
    try:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        handle = block.register_forward_hook(hook)
        yield
    finally:
        if handle is not None:
            handle.remove()
        for module, mode in modes:
            module.training = mode
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def capacity(mu: torch.Tensor, var: torch.Tensor, prior_var: float) -> torch.Tensor:
    """KL[N(mu, var) || N(0, prior_var)] per element (the official formula when ``prior_var`` = 1)."""
    return 0.5 * (torch.log(prior_var / var) + (var + mu**2) / prior_var - 1)


def default_layer(num_layers: int) -> int:
    """Layer 9 of 12 scaled to the depth, ``round(0.75 L)``, but never the last layer: at least one block must
    follow the bottleneck, or only the pooled token reaches the score (the official 9 of 12 has two after)."""
    return max(0, min(round(0.75 * num_layers), num_layers - 2))


def m2ib(
    ctx: Context,
    layer: int | None = None,
    beta: float = 0.1,
    variance: float = 1.0,
    steps: int = 10,
    lr: float = 1.0,
    samples: int = 10,
    seed: int = 0,
) -> MapResult:
    if steps < 1 or samples < 1:
        raise MethodError(f"m2ib needs steps >= 1 and samples >= 1; got steps={steps}, samples={samples}.")
    layer = bottleneck_layer(ctx, layer)
    tokens, counted, pair_scores = pair_batch(ctx, samples)
    kl = fit_bottleneck(ctx, layer, tokens, counted, pair_scores, beta, variance, steps, lr, samples, seed)
    per_token = kl.mean(1).sum(-1)  # (P, T): mean over samples, sum over channels
    per_token = per_token.reshape(ctx.num_images, ctx.num_texts, tokens)  # (B, K, T)
    return MapResult(
        maps=ctx.token_map(per_token),
        scores=ctx.model_scores(),
        layer_indices=[layer],
        options={
            "layer": layer,
            "beta": beta,
            "variance": variance,
            "steps": steps,
            "lr": lr,
            "samples": samples,
            "seed": seed,
        },
    )


def bottleneck_layer(ctx: Context, layer: int | None) -> int:
    """The layer index whose output is replaced (``default_layer`` when None), with a warning on the last."""
    layer = default_layer(ctx.num_layers) if layer is None else resolve_layers([layer], ctx.num_layers)[0]
    if layer == ctx.num_layers - 1:
        warnings.warn(
            "m2ib: a bottleneck on the LAST layer's output reaches the score only through the pooled "
            "token; the other tokens' capacities then reflect the compression term alone. Choose an "
            "earlier layer (the default keeps at least one block after it).",
            stacklevel=4,  # two frames above m2ib, as when m2ib warned itself (stacklevel=3)
        )
    return layer


def pair_batch(ctx: Context, samples: int) -> tuple[int, torch.Tensor, Callable[[], torch.Tensor]]:
    """Every (image, text) pair ``p = (b, k) = (p // K, p % K)`` repeated ``samples`` times (pair-major), as
    one batch of the explained tower: ``(T, counted (P, T), scores)``, ``counted`` the positions in the
    compression mean (texts: up to the end token) and ``scores()`` each pair's score per sample ``(P*S,)``."""
    model = ctx.handle.model
    pairs = ctx.num_images * ctx.num_texts
    image_of = torch.arange(pairs, device=ctx.pixels.device) // ctx.num_texts  # (P,)
    text_of = torch.arange(pairs, device=ctx.pixels.device) % ctx.num_texts  # (P,)

    def repeat(index: torch.Tensor) -> torch.Tensor:
        return index.repeat_interleave(samples)  # (P,) -> (P*S,), pair-major

    other_image = ctx.fixed_image_embeds() if ctx.side == "text" else None
    other_text = ctx.fixed_text_embeds() if ctx.side == "image" else None
    ctx.extra_embeds()

    if ctx.side == "image":
        tokens = ctx.grid[0] * ctx.grid[1] + ctx.family.prefix_tokens(model)  # patches and class token(s)
        counted = torch.ones(pairs, tokens, dtype=torch.bool, device=ctx.pixels.device)  # (P, T)
        batch_pixels = ctx.pixels[repeat(image_of)]  # (P*S, 3, H, W)

        def pair_scores() -> torch.Tensor:
            scores = ctx.score(ctx.image_features(batch_pixels), other_text)  # (P*S, K)
            return scores.gather(1, repeat(text_of)[:, None])[:, 0]  # (P*S,)

        return tokens, counted, pair_scores
    tokens = ctx.text.input_ids.shape[1]
    positions = torch.arange(tokens, device=ctx.pixels.device)
    counted = positions[None, :] <= ctx.text.eos_positions[text_of][:, None]  # (P, T): padding not counted
    rows = repeat(text_of)
    batch_text = TextBatch(
        ctx.text.input_ids[rows], ctx.text.attention_mask[rows], ctx.text.eos_positions[rows], [], []
    )

    def pair_scores() -> torch.Tensor:
        scores = ctx.score(other_image, ctx.text_features(batch_text))  # (B, P*S)
        return scores.gather(0, repeat(image_of)[None, :])[0]  # (P*S,)

    return tokens, counted, pair_scores


def fit_bottleneck(
    ctx: Context,
    layer: int,
    tokens: int,
    counted: torch.Tensor,
    pair_scores: Callable[[], torch.Tensor],
    beta: float,
    variance: float,
    steps: int,
    lr: float,
    samples: int,
    seed: int,
) -> torch.Tensor:
    """Fit alpha (one per pair, token and channel) with Adam to minimise ``beta * compression - fitting``
    (module docstring) and return the KL capacity of the last step's forward, ``(P, S, T, D)``, detached."""
    pairs = counted.shape[0]
    model = ctx.handle.model
    width = ctx.family.attention(encoder_layers(model, ctx.tower)[layer]).out.in_features  # D, heads concatenated
    noise_tokens = tokens if ctx.side == "image" else max(tokens, ctx.handle.context_length)
    dtype = ctx.handle.dtype
    alpha = torch.full(
        (pairs, 1, tokens, width), INITIAL_ALPHA, dtype=dtype, device=ctx.pixels.device, requires_grad=True
    )  # (P, 1, T, D); the 1 broadcasts over noise samples
    optimizer = torch.optim.Adam([alpha], lr=lr)
    generator = torch.Generator(device=ctx.pixels.device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def replace(hidden: torch.Tensor) -> torch.Tensor:
        lam = torch.sigmoid(alpha)  # (P, 1, T, D)
        x = hidden.reshape(pairs, samples, tokens, width)  # (P, S, T, D)
        mu = x * lam  # (P, S, T, D)
        var = (torch.sigmoid(-alpha) ** 2 * variance).expand_as(mu)  # (1 - lambda)^2 sigma^2 without cancellation
        state["capacity"] = capacity(mu, var, variance)
        eps = torch.randn((1, samples, noise_tokens, width), generator=generator, dtype=dtype, device=hidden.device)
        eps = eps[:, :, :tokens]  # (1, S, T, D): position j's noise does not depend on the padded length
        return (mu + var.sqrt() * eps).reshape(hidden.shape)  # (P*S, T, D)

    with torch.enable_grad(), bottleneck_intervention(model, ctx.tower, layer, replace):
        for _ in range(steps):
            fitting = pair_scores().reshape(pairs, samples).mean(1)  # (P,)
            compression = (state["capacity"].sum(dim=(1, 3)) * counted).sum(1) / (
                samples * width * counted.sum(1)
            )  # (P,)
            loss = (beta * compression - fitting).sum()  # pairs have separate alphas: a sum keeps them apart
            optimizer.zero_grad()
            (alpha.grad,) = torch.autograd.grad(loss, [alpha])
            optimizer.step()
    return state["capacity"].detach()


register_method(
    MethodSpec(
        name="m2ib",
        assumes_pooled_score=None,  # any scalar of the image: the ITM score too
        families=("*",),  # the family's blocks and scores; a bottleneck needs nothing else
        paper="Wang et al., Visual Explanations of Image-Text Representations via Multi-Modal Information "
        "Bottleneck Attribution, NeurIPS 2023",
        image=m2ib,
        text=m2ib,
        # The bottleneck is a hook that replaces a layer's output inside the forward: a modified forward, on the
        # model's own pixels / tokens (faithclip check detects exactly that; it once declared modifies_input).
        modifies_model=True,
        slow=True,
        defaults={
            "layer": "min(round(0.75 L), L - 2) (9 of 12)",
            "beta": 0.1,
            "variance": 1.0,
            "steps": 10,
            "lr": 1.0,
            "samples": 10,
            "seed": 0,
        },
        summary="per-token KL capacity of an information bottleneck Z = l X + (1-l) eps at a layer, fitted to keep the score",
    )
)
