"""Load OpenAI / open_clip ViT checkpoints as a transformers ``CLIPModel``.

OpenAI's CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
Supervision", github.com/openai/CLIP) and open_clip's ViT models share one state-dict layout. The
architecture is read from tensor shapes exactly as OpenAI's ``build_model`` reads it; the weights
are then copied one to one, with no approximation:

    OpenAI / open_clip key                  transformers CLIPModel key
    ----------------------                  --------------------------
    visual.conv1.weight                     vision_model.embeddings.patch_embedding.weight
    visual.class_embedding                  vision_model.embeddings.class_embedding
    visual.positional_embedding             vision_model.embeddings.position_embedding.weight
    visual.ln_pre.{weight,bias}             vision_model.pre_layrnorm.{weight,bias}
    visual.transformer.resblocks.N.<block>  vision_model.encoder.layers.N.<block>
    visual.ln_post.{weight,bias}            vision_model.post_layernorm.{weight,bias}
    visual.proj         (width, embed)      visual_projection.weight  (transposed)
    token_embedding.weight                  text_model.embeddings.token_embedding.weight
    positional_embedding                    text_model.embeddings.position_embedding.weight
    transformer.resblocks.N.<block>         text_model.encoder.layers.N.<block>
    ln_final.{weight,bias}                  text_model.final_layer_norm.{weight,bias}
    text_projection     (width, embed)      text_projection.weight    (transposed)
    logit_scale                             logit_scale

    where <block> maps as
    attn.in_proj_{weight,bias} (3*width)    self_attn.{q,k,v}_proj.{weight,bias}  (split in 3)
    attn.out_proj.{weight,bias}             self_attn.out_proj.{weight,bias}
    ln_1.{weight,bias}                      layer_norm1.{weight,bias}
    mlp.c_fc.{weight,bias}                  mlp.fc1.{weight,bias}
    ln_2.{weight,bias}                      layer_norm2.{weight,bias}
    mlp.c_proj.{weight,bias}                mlp.fc2.{weight,bias}

Text pooling. OpenAI pools the text tower at ``text.argmax(dim=-1)``: the end-of-text token has the
largest id of the vocabulary (49407 = vocab_size - 1), so the argmax is the first EOT, whatever
follows it. transformers' ``CLIPTextTransformer`` pools at that same argmax when
``text_config.eos_token_id == 2`` (its legacy branch, also what the hub's ``openai/clip-vit-*``
configs carry) and otherwise at the first position equal to ``eos_token_id``. We set
``eos_token_id = 2`` so the converted model pools where OpenAI's code pools for every input. For
tokenizer output (start token, words, EOT, then zeros as OpenAI pads or EOTs as the hub pads) the
two rules agree; they part only on hand-made rows lacking both start and end tokens, or holding ids
above the EOT (tokens added after training).

Only ViT towers are supported: ResNet CLIPs have no ``CLIPModel`` equivalent, and open_clip variants
with extra modules (layer scale, attentional pooling, HF text towers, SigLIP's ``logit_bias``) are
refused through the unexpected-keys check rather than silently dropped.

Preprocessing. These checkpoints were published with OpenAI's ``_transform`` (open_clip's default
transform is the same steps): torchvision's ``Resize``/``CenterCrop`` and a PIL ``convert("RGB")`` after
the crop. ``faithclip.load`` therefore gives them ``ImagePreprocess.for_pipeline("openai", size)``, whose
crop offset rounds half to even where transformers floors (``faithclip.models.preprocess``).
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel
from transformers.initialization import no_init_weights

from faithclip.errors import ModelError

__all__ = ["convert_openai_state_dict", "load_openai_checkpoint"]

# Scalars OpenAI's TorchScript archives carry next to the weights; build_model drops them too.
_ARCHIVE_METADATA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})
# The tensors build_model reads the architecture from.
_ARCHITECTURE_KEYS = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "visual.proj",
    "text_projection",
    "positional_embedding",
    "token_embedding.weight",
    "ln_final.weight",
)
_SUPPORTED_ACTIVATIONS = ("quick_gelu", "gelu")
_HEAD_WIDTH = 64  # OpenAI fixes the per-head width: heads = width // 64
_KEYS_SHOWN = 5

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Architecture:
    """What OpenAI's ``build_model`` reads off the tensor shapes (ViT branch)."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_intermediate: int
    patch_size: int
    grid_size: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_intermediate: int

    @property
    def image_size(self) -> int:
        return self.patch_size * self.grid_size


def convert_openai_state_dict(state_dict: Mapping[str, torch.Tensor], *, hidden_act: str = "quick_gelu") -> CLIPModel:
    """Build a ``CLIPModel`` holding exactly the weights of an OpenAI-layout ViT CLIP state dict.

    ``hidden_act`` is the MLP activation the checkpoint was trained with: ``"quick_gelu"`` for
    OpenAI's models and open_clip's ``*-quickgelu`` ones, ``"gelu"`` for open_clip models trained
    with plain GELU (most LAION ones). The tensors cannot tell the two apart, so it must be stated.

    Every checkpoint weight must land in the model and every model weight must come from the
    checkpoint; otherwise a ``ModelError`` names the offending keys. Weights are cast to float32.
    """
    if hidden_act not in _SUPPORTED_ACTIVATIONS:
        raise ModelError(
            f"hidden_act must be one of {_SUPPORTED_ACTIVATIONS}, got {hidden_act!r}: use "
            "'quick_gelu' for OpenAI and open_clip '*-quickgelu' checkpoints, "
            "'gelu' for other open_clip ones"
        )
    state_dict = _strip_prefix(dict(state_dict), "module.")
    _refuse_non_vit(state_dict)
    architecture = _infer_architecture(state_dict)
    mapping = _key_mapping(architecture)
    _check_keys(state_dict, mapping)

    not_float = [key for key in mapping if not state_dict[key].is_floating_point()]
    if not_float:
        key = not_float[0]
        raise ModelError(
            f"checkpoint tensor {key!r} holds {state_dict[key].dtype} values"
            + (f" (and {len(not_float) - 1} more tensors)" if len(not_float) > 1 else "")
            + "; faithclip expected floating-point weights (float32, float16 or bfloat16)"
        )
    converted: dict[str, torch.Tensor] = {}
    for openai_key, targets in mapping.items():
        source = state_dict[openai_key].detach().to(torch.float32)
        for hf_key, transform in targets:
            converted[hf_key] = transform(source).contiguous()

    # Random initialisation would be overwritten anyway: the strict load below fills every weight.
    with no_init_weights():
        model = CLIPModel(_clip_config(architecture, hidden_act))
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:  # shape mismatches between tensors of one checkpoint
        raise ModelError(
            f"checkpoint tensors have inconsistent shapes ({shape_mismatches(error)}); faithclip "
            "expected the shapes the checkpoint's own widths and layer counts imply"
        ) from error
    return model.eval()


def shape_mismatches(error: BaseException, shown: int = 2) -> str:
    """The first ``shown`` 'size mismatch for KEY: ...' lines of torch's ``load_state_dict`` error, in one line."""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if "size mismatch" in line]
    if not lines:
        return " ".join(str(error).split())[:300]
    more = f" and {len(lines) - shown} more" if len(lines) > shown else ""
    return "; ".join(line.rstrip(".") for line in lines[:shown]) + more


def load_openai_checkpoint(path: str | Path, *, hidden_act: str = "quick_gelu") -> CLIPModel:
    """Load an OpenAI or open_clip ViT checkpoint file as a float32 ``CLIPModel`` in eval mode.

    Accepted files: a plain state dict (``.pt``/``.pth``/``.bin`` through ``torch.load`` with
    ``weights_only=True``, or ``.safetensors``), an open_clip training checkpoint (a dict with a
    ``state_dict`` entry, keys possibly prefixed ``module.``), and OpenAI's released TorchScript
    archives (loaded with ``torch.jit.load`` on the CPU; only their ``state_dict()`` is kept).
    See ``convert_openai_state_dict`` for ``hidden_act``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint file not found: {path}")
    return convert_openai_state_dict(_read_state_dict(path), hidden_act=hidden_act)


# --- reading files -----------------------------------------------------------------------------


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ModelError(f"{path} is not a readable safetensors file: {error}") from error

    if _is_torchscript_archive(path):
        return _read_torchscript(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as torch_load_error:  # noqa: BLE001 - re-raised below with both causes
        # Not a plain pickle of tensors; a TorchScript archive in an older container is the one
        # other format OpenAI shipped.
        try:
            return _read_torchscript(path)
        except ModelError:
            raise ModelError(
                f"{path} is neither a PyTorch state dict nor a TorchScript archive "
                f"({torch_load_reason(torch_load_error)}); faithclip expected an OpenAI or open_clip ViT CLIP "
                "checkpoint: a file of named tensors"
            ) from torch_load_error
    return _unwrap_checkpoint(loaded, path)


def torch_load_reason(error: BaseException) -> str:
    """One line for why ``torch.load(..., weights_only=True)`` refused a file: torch's own message spans
    many lines of advice about ``weights_only``; the line that says what the file holds is kept."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    detail = (
        " ".join(text.split(marker, 1)[1].split()).split(" Check the documentation")[0].split(". Please use")[0]
        if marker in text
        else next((line.strip() for line in text.splitlines() if line.strip()), "")
    )
    detail = detail.rstrip(". ") or type(error).__name__
    if "Unsupported global" in detail:
        return (
            f"it holds Python objects besides tensors ({detail}), which faithclip does not unpickle: "
            "torch.load with weights_only=True, so that a checkpoint cannot run code"
        )
    return f"its bytes are not a PyTorch pickle of tensors (torch.load: {detail})"


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold ``<root>/constants.pkl`` and ``<root>/code/``; torch.save's don't."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # OpenAI shipped TorchScript; the user cannot act on torch deprecating it.
            warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError/ValueError/pickle errors
        raise ModelError(f"{path} could not be read as a TorchScript archive: {error}") from error
    return dict(module.state_dict())


def _unwrap_checkpoint(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in ``loaded``: itself, or the ``state_dict`` entry of an open_clip training
    checkpoint ``{"epoch": ..., "state_dict": ..., "optimizer": ...}``."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise ModelError(
            f"{path} does not hold a state dict (a mapping of names to tensors); "
            "pass an OpenAI or open_clip CLIP checkpoint"
        )
    return loaded


# --- architecture ------------------------------------------------------------------------------


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop the prefix DistributedDataParallel adds, if every key carries it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def _refuse_non_vit(state_dict: Mapping[str, torch.Tensor]) -> None:
    if any(key.startswith("visual.layer1.") for key in state_dict):
        raise ModelError(
            "ResNet CLIP is not supported; faithclip explains ViT CLIPs "
            "(use a ViT-B/32, ViT-B/16, ViT-L/14 ... checkpoint)"
        )
    absent = [key for key in _ARCHITECTURE_KEYS if key not in state_dict]
    if len(absent) == len(_ARCHITECTURE_KEYS):
        raise ModelError(
            "this is not an OpenAI/open_clip ViT CLIP checkpoint: none of its keys (first ones: "
            f"{sorted(state_dict)[:_KEYS_SHOWN]}) is a CLIP weight such as 'visual.conv1.weight'; "
            "a transformers CLIP (keys 'vision_model.*') loads from its directory: faithclip.load"
        )
    if absent:
        raise ModelError(
            f"checkpoint lacks {absent}, which a ViT CLIP needs; the file is incomplete or of another architecture"
        )


def _layer_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of residual blocks under ``prefix``; gaps in the numbering surface as missing keys."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(match.group(1)) for key in state_dict if (match := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def _infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> _Architecture:
    conv1 = state_dict["visual.conv1.weight"]  # (width, 3, patch, patch)
    vision_positions = state_dict["visual.positional_embedding"].shape[0]  # 1 + grid**2
    grid_size = round(math.sqrt(max(vision_positions - 1, 0)))
    if grid_size < 1 or grid_size**2 + 1 != vision_positions:
        raise ModelError(
            f"visual.positional_embedding has {vision_positions} rows, not 1 + a square number of "
            "patches; this is not a standard ViT CLIP checkpoint"
        )
    vision_width = conv1.shape[0]
    text_width = state_dict["ln_final.weight"].shape[0]
    for name, width in (("vision", vision_width), ("text", text_width)):
        if width < _HEAD_WIDTH or width % _HEAD_WIDTH:
            raise ModelError(
                f"{name} width {width} is not a multiple of {_HEAD_WIDTH}, so OpenAI's head count "
                "(width // 64) does not apply; this checkpoint is not a standard ViT CLIP"
            )

    def intermediate(prefix: str, width: int) -> int:
        c_fc = state_dict.get(f"{prefix}0.mlp.c_fc.weight")  # (intermediate, width)
        return c_fc.shape[0] if c_fc is not None else 4 * width

    return _Architecture(
        embed_dim=state_dict["text_projection"].shape[1],  # (text width, embed)
        vision_width=vision_width,
        vision_layers=_layer_count(state_dict, "visual.transformer.resblocks."),
        vision_intermediate=intermediate("visual.transformer.resblocks.", vision_width),
        patch_size=conv1.shape[-1],
        grid_size=grid_size,
        context_length=state_dict["positional_embedding"].shape[0],  # (context, text width)
        vocab_size=state_dict["token_embedding.weight"].shape[0],  # (vocab, text width)
        text_width=text_width,
        text_layers=_layer_count(state_dict, "transformer.resblocks."),
        text_intermediate=intermediate("transformer.resblocks.", text_width),
    )


def _clip_config(architecture: _Architecture, hidden_act: str) -> CLIPConfig:
    a = architecture
    text_config = {
        "vocab_size": a.vocab_size,
        "hidden_size": a.text_width,
        "intermediate_size": a.text_intermediate,
        "num_hidden_layers": a.text_layers,
        "num_attention_heads": a.text_width // _HEAD_WIDTH,
        "max_position_embeddings": a.context_length,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": a.embed_dim,
        # 2 selects transformers' argmax-of-ids pooling, OpenAI's rule (see the module docstring).
        "eos_token_id": 2,
        "bos_token_id": a.vocab_size - 2,  # OpenAI's <|startoftext|>
        "pad_token_id": 0,  # OpenAI's tokenizer pads with zeros
    }
    vision_config = {
        "hidden_size": a.vision_width,
        "intermediate_size": a.vision_intermediate,
        "num_hidden_layers": a.vision_layers,
        "num_attention_heads": a.vision_width // _HEAD_WIDTH,
        "image_size": a.image_size,
        "patch_size": a.patch_size,
        "num_channels": 3,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": a.embed_dim,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=a.embed_dim)
    # Eager attention materialises the attention weights the explanation methods read.
    config._attn_implementation = "eager"
    return config


# --- key mapping -------------------------------------------------------------------------------


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t()


def _chunk(index: int) -> Transform:
    """The ``index``-th of q, k, v in a packed ``in_proj`` tensor of shape (3*width, ...)."""

    def take(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.chunk(3, dim=0)[index]

    return take


def _block_mapping(openai_prefix: str, hf_prefix: str) -> dict[str, list[tuple[str, Transform]]]:
    mapping: dict[str, list[tuple[str, Transform]]] = {}
    for suffix in ("weight", "bias"):
        mapping[f"{openai_prefix}attn.in_proj_{suffix}"] = [
            (f"{hf_prefix}self_attn.{name}_proj.{suffix}", _chunk(index)) for index, name in enumerate(("q", "k", "v"))
        ]
        for openai_name, hf_name in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("mlp.c_fc", "mlp.fc1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            mapping[f"{openai_prefix}{openai_name}.{suffix}"] = [(f"{hf_prefix}{hf_name}.{suffix}", _identity)]
    return mapping


def _key_mapping(architecture: _Architecture) -> dict[str, list[tuple[str, Transform]]]:
    """Every OpenAI key the architecture needs, with the transformers key(s) it fills."""
    one_to_one = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    mapping = {key: [(target, _identity)] for key, target in one_to_one.items()}
    mapping["visual.proj"] = [("visual_projection.weight", _transpose)]
    mapping["text_projection"] = [("text_projection.weight", _transpose)]
    for index in range(architecture.vision_layers):
        mapping.update(
            _block_mapping(f"visual.transformer.resblocks.{index}.", f"vision_model.encoder.layers.{index}.")
        )
    for index in range(architecture.text_layers):
        mapping.update(_block_mapping(f"transformer.resblocks.{index}.", f"text_model.encoder.layers.{index}."))
    return mapping


def _check_keys(state_dict: Mapping[str, torch.Tensor], mapping: Mapping[str, object]) -> None:
    present = set(state_dict) - _ARCHIVE_METADATA_KEYS
    missing = sorted(set(mapping) - present)
    unexpected = sorted(present - set(mapping))
    if not (missing or unexpected):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:_KEYS_SHOWN]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:_KEYS_SHOWN]}")
    raise ModelError(
        "checkpoint does not match the standard OpenAI ViT CLIP layout: "
        + "; ".join(problems)
        + ". faithclip loads only plain ViT CLIPs (no layer scale, attentional pooling or "
        "custom text towers); check that the file is complete and of that kind"
    )
