"""Loading CLIP models: shipped names, transformers directories and hub ids, OpenAI/open_clip checkpoints.

Every model is loaded with the EAGER attention implementation, the only one that materialises the
attention probabilities the CLS-query methods differentiate. A model handed in with SDPA/flash attention
is switched to eager (numerically the same attention, computed explicitly) with a logged notice.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from faithclip.errors import ModelError
from faithclip.models.clip import ModelHandle
from faithclip.models.families import family_for_model_type, family_of
from faithclip.models.preprocess import ImagePreprocess

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "shipped"
DEFAULT_MODEL = "shapes-clip"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_KINDS = ("cpu", "cuda", "cuda:N", "mps")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` (or a ``torch.dtype``) -> the dtype; anything but float32/float16/bfloat16 is refused."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (*DTYPES.values(), torch.float64):
            raise ModelError(f"dtype {dtype} is not a floating-point model dtype; choose from {', '.join(DTYPES)}.")
        return dtype
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}.")
    return DTYPES[name]


def parse_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` -> a device that exists on this machine (else a
    ``ModelError`` saying which devices torch sees)."""
    if device is None:
        return torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; choose from {', '.join(DEVICE_KINDS)}.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(
                f"device {device!r}: torch sees no CUDA device on this machine (torch "
                f"{torch.__version__}); use --device cpu, or a CUDA build of torch on a GPU machine."
            )
        if parsed.index is not None and parsed.index >= count:
            raise ModelError(f"device {device!r}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    elif parsed.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelError(f"device {device!r}: the Apple MPS backend is not available here; use --device cpu.")
    elif parsed.type != "cpu":
        raise ModelError(f"unsupported device {device!r}; choose from {', '.join(DEVICE_KINDS)}.")
    return parsed


def load(
    name_or_path: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    hidden_act: str = "quick_gelu",
) -> ModelHandle:
    """Load a CLIP model for explanation.

    ``name_or_path`` is one of: ``None`` (the shipped default, ``shapes-clip``); a shipped model name; a
    local transformers directory (``config.json`` with ``model_type`` ``clip``); an OpenAI / open_clip ViT
    checkpoint file (state dict or TorchScript archive; ``hidden_act`` selects QuickGELU or GELU, and
    ``tokenizer`` names a tokenizer directory or hub id); or a transformers hub id.

    The handle's ``preprocess`` follows the pipeline the model was published with
    (``handle.preprocess_rules``): transformers' rules for directories, hub ids and shipped models (unless
    their ``preprocessor_config.json`` records other ``faithclip_rules``), OpenAI's (torchvision's centre
    crop, RGB conversion after the crop) for OpenAI and open_clip checkpoint files.

    ``device`` (``"cpu"`` default, ``"cuda"``, ``"cuda:N"``, ``"mps"``) and ``dtype`` (``float32`` default,
    ``float16``, ``bfloat16``; names or torch dtypes) place the model; every tensor faithclip makes for it
    follows ``handle.device`` and ``handle.dtype`` (scores, RISE's saliency and the ECLIP channel sums are
    taken in float32 for a half-precision model: ``faithclip.targets.accumulation_dtype``).
    """
    dtype = parse_dtype(dtype)
    parse_device(device)  # before the weights are read: a missing GPU fails at once
    return place(_load(name_or_path, tokenizer=tokenizer, dtype=dtype, hidden_act=hidden_act), device, dtype)


def place(
    handle: ModelHandle, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> ModelHandle:
    """Move ``handle``'s model to ``device`` and/or ``dtype`` (in place; ``None`` keeps it) and return it.
    For models built rather than loaded (e.g. ``random_b32``)."""
    target = None if device is None else parse_device(device)
    dtype = None if dtype is None else parse_dtype(dtype)
    if (target is not None and target != handle.device) or (dtype is not None and dtype != handle.dtype):
        handle.model.to(device=target, dtype=dtype)
    return handle


def _load(
    name_or_path: str | Path | None, *, tokenizer: str | Path | None, dtype: torch.dtype, hidden_act: str
) -> ModelHandle:
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    path = Path(name)
    if name in shipped_models():
        return _load_directory(SHIPPED_DIR / name, name=name, dtype=dtype)
    if path.is_dir():
        return _load_directory(path, name=str(path), dtype=dtype, tokenizer=tokenizer)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelError(f"{path} is a file but not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}).")
        from faithclip.models.openai_checkpoint import load_openai_checkpoint

        model = load_openai_checkpoint(path, hidden_act=hidden_act).to(dtype)
        return ModelHandle(
            model=model.eval(),
            tokenizer=_load_tokenizer(tokenizer) if tokenizer is not None else None,
            # OpenAI's ``_transform`` and open_clip's default transform: torchvision's rules
            preprocess=ImagePreprocess.for_pipeline("openai", int(model.config.vision_config.image_size)),
            name=str(path),
        )
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{name} is neither a CLIP checkpoint directory nor a checkpoint file.{_did_you_mean(name)}")
    return _load_hub(name, dtype=dtype)


def _did_you_mean(name: str) -> str:
    """`` Did you mean 'shapes-clip'?`` when ``name`` is close to a shipped model name (else empty)."""
    close = difflib.get_close_matches(name.lower(), shipped_models(), n=2, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds (``False`` at once in offline mode).

    transformers retries an unreachable hub for half a minute before failing; this one request, with
    huggingface_hub's own session (its endpoint and proxies), settles the question first."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as error:  # noqa: BLE001  any transport failure (DNS, refused, timeout, TLS) means "no"
        logger.debug("hub %s unreachable: %s", constants.ENDPOINT, error)
        return False
    return True


def from_hf(
    model: Any, tokenizer: Any = None, *, preprocess: ImagePreprocess | None = None, name: str | None = None
) -> ModelHandle:
    """Wrap a transformers model the user already holds (a ``CLIPModel`` or another supported family: its
    ``config.model_type`` says which; its weights are not copied or changed).

    If the model computes attention with SDPA or flash attention it is switched to eager attention
    (the same function, computed explicitly), because attention probabilities must exist to be explained.
    """
    family = family_of(model)
    ensure_eager(model)
    if preprocess is None:
        preprocess = family.default_preprocess(model)
    if name is None:
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return ModelHandle(model=model, tokenizer=tokenizer, preprocess=preprocess, name=name, family=family)


def ensure_eager(model: Any) -> None:
    """Switch a model to eager attention if it uses another implementation (logged, not silent)."""
    implementation = getattr(model.config, "_attn_implementation", "eager")
    if implementation != "eager":
        logger.warning("model uses %r attention; switching to 'eager' so attention probabilities exist", implementation)
        model.set_attn_implementation("eager")


def _load_directory(path: Path, *, name: str, dtype: torch.dtype, tokenizer: str | Path | None = None) -> ModelHandle:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(
            f"{path} is not a CLIP checkpoint directory: it has no config.json "
            f"(found: {', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'nothing'})."
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as error:
        raise ModelError(f"{config_file} is not valid JSON ({error}).") from error
    family = family_for_model_type(model_type, str(path))
    import transformers

    check_weight_dtypes(path)
    try:
        # mismatched shapes and missing tensors are reported by faithclip below, in one line each, not as
        # transformers' table and exception (a model with random tensors must never be explained)
        with _quiet_loading_report():
            model, info = getattr(transformers, family.model_class).from_pretrained(
                path, attn_implementation="eager", dtype=dtype, ignore_mismatched_sizes=True, output_loading_info=True
            )
    except OSError as error:
        raise ModelError(f"{path} has a {model_type} config but its weights could not be loaded: {error}") from error
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelError(
            f"{path} could not be built from its config.json and weights ({_first_line(error)}); "
            f"faithclip expected a {model_type} directory written by save_pretrained."
        ) from error
    check_loading_info(path, model_type, info)
    family.check_model(model)
    preprocessor = path / "preprocessor_config.json"
    preprocess = ImagePreprocess.from_json(preprocessor) if preprocessor.is_file() else family.default_preprocess(model)
    tok = None
    if family.has_side("text") or tokenizer is not None:
        tok_source = tokenizer if tokenizer is not None else path
        tok = _load_tokenizer(tok_source, required=tokenizer is not None)
    return ModelHandle(
        model=model.eval(),
        tokenizer=tok,
        preprocess=preprocess,
        name=name,
        family=family,
        trained_on_shapes=(path / "TRAINING.json").is_file(),
    )


def check_loading_info(path: Path, model_type: str, info: dict[str, Any]) -> None:
    """Refuse a directory whose weights do not fit its ``config.json``: tensors of other shapes, or tensors
    the config needs that the weights lack (transformers would fill them with random values)."""
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, found, expected = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
        raise ModelError(
            f"{path}: the weights do not fit its config.json: {key} is {tuple(found)} in the weights, "
            f"but the {model_type} config.json implies {tuple(expected)}{more}. faithclip expected "
            "weights and config.json saved together (save_pretrained)."
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(
            f"{path}: the weights lack {len(missing)} tensor(s) its config.json needs ({missing[0]}"
            f"{more}); faithclip expected every tensor of a {model_type} model, not a model with "
            "randomly initialised parts. Re-save it with save_pretrained."
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        logger.warning(
            "%s: %d tensor(s) of the weights are not used by a %s model (%s ...)",
            path,
            len(unexpected),
            model_type,
            unexpected[0],
        )


def check_weight_dtypes(path: Path) -> None:
    """Refuse weights and biases stored as integers or booleans in a directory's ``*.safetensors`` files
    (transformers would cast them to floats without a word); read from the files' headers only."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        return
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():
                    if not key.endswith((".weight", ".bias")):
                        continue
                    dtype = weights.get_slice(key).get_dtype()
                    if not dtype.startswith(("F", "BF")):
                        raise ModelError(
                            f"{file}: tensor {key} holds {dtype} values; faithclip expected "
                            "floating-point weights (F32, F16 or BF16)."
                        )
        except ModelError:
            raise
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise ModelError(
                f"{file} is not a readable safetensors file ({_first_line(error)}); faithclip "
                "expected the weights save_pretrained writes."
            ) from error


@contextlib.contextmanager
def _quiet_loading_report():
    """Hide transformers' multi-line load report while ``check_loading_info`` says the same in one line."""
    names = (
        "transformers.modeling_utils",
        "transformers.utils.loading_report",
        "transformers.distributed.tensor_parallel",
    )
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _load_tokenizer(source: str | Path, required: bool = True) -> Any:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        if required:
            raise ModelError(f"could not load a tokenizer from {source}: {error}") from error
        logger.warning("no tokenizer found in %s; texts must be given as token ids", source)
        return None


def _load_hub(name: str, *, dtype: torch.dtype) -> ModelHandle:
    """A hub id: from the local cache when it is there, else from the hub when it can be reached; else a
    one-line error at once (transformers would retry an unreachable hub for half a minute)."""
    shipped = ", ".join(shipped_models()) or "none"
    if _cached(name):
        try:
            return _from_hub(name, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as error:  # partly cached: fetch the rest if the hub answers
            logger.debug("%s is only partly cached: %s", name, error)
    if not hub_reachable():
        raise ModelError(
            f"model {name!r} not found: it is not a shipped model ({shipped}), a local directory or checkpoint "
            f"file, or in the hub cache, and the hub is unreachable.{_did_you_mean(name)}"
        )
    try:
        return _from_hub(name, dtype=dtype, local_files_only=False)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"could not load {name!r}: it is not a shipped model ({shipped}), a local directory or checkpoint "
            f"file, and the hub did not provide it ({' '.join(str(error).split())}).{_did_you_mean(name)}"
        ) from error


def _cached(name: str) -> bool:
    """Whether the hub cache holds ``name``'s config (asked of huggingface_hub, without loading transformers'
    model code)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def _from_hub(name: str, *, dtype: torch.dtype, local_files_only: bool) -> ModelHandle:
    import transformers

    config = transformers.AutoConfig.from_pretrained(name, local_files_only=local_files_only)
    family = family_for_model_type(getattr(config, "model_type", None), name)
    model = getattr(transformers, family.model_class).from_pretrained(
        name, attn_implementation="eager", dtype=dtype, local_files_only=local_files_only
    )
    family.check_model(model)
    tokenizer = (
        transformers.AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
        if family.has_side("text")
        else None
    )
    processor_config = (
        transformers.CLIPImageProcessorPil.get_image_processor_dict(name, local_files_only=local_files_only)[0]
        if hasattr(transformers, "CLIPImageProcessorPil")
        else {}
    )
    preprocess = ImagePreprocess.from_dict(processor_config) if processor_config else family.default_preprocess(model)
    return ModelHandle(model=model.eval(), tokenizer=tokenizer, preprocess=preprocess, name=name, family=family)
