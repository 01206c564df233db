"""What a model's numbers depend on, in a form two runs can compare: weights, configuration,
preprocessing, tokenizer, and the versions of the code that computes them.

Everything is hashed or copied exactly (raw bytes, canonical JSON), never summarised by floating-point
reductions, whose value depends on the thread count.
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

import torch

from faithclip.models.clip import ModelHandle

# config keys that say where or by what a config was written, not what the model computes
_CONFIG_PROVENANCE = ("_name_or_path", "transformers_version")


def model_fingerprint(handle: ModelHandle) -> str:
    """A short hash of the model's parameter bytes (a different checkpoint at the same path is detected)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in handle.model.named_parameters():
            digest.update(name.encode())
            digest.update(str(parameter.dtype).encode())
            digest.update(parameter.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def config_identity(handle: ModelHandle) -> dict[str, Any]:
    """The model's configuration (``config.json``: activation, widths, epsilon, special ids ...) as a dict."""
    return _without_provenance(handle.model.config.to_dict())


def preprocess_identity(handle: ModelHandle) -> dict[str, Any]:
    """Every preprocessing setting: sizes, mean/std, resampling and the pipeline rules (crop and resize
    rounding, RGB conversion)."""
    return json.loads(json.dumps(handle.preprocess.to_dict()))


def tokenizer_fingerprint(handle: ModelHandle) -> str | None:
    """A short hash of the tokenizer: its vocabulary, merges, normaliser, pre-tokenizer, post-processor,
    special tokens and length/padding settings. ``None`` without a tokenizer."""
    tokenizer = handle.tokenizer
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # to_str() writes hash maps (the vocabulary) in no fixed order: canonicalise the JSON
        content: Any = json.loads(backend.to_str())
    else:
        content = sorted(tokenizer.get_vocab().items())
    settings = {
        "class": type(tokenizer).__name__,
        "special": _jsonable(tokenizer.special_tokens_map),
        "model_max_length": getattr(tokenizer, "model_max_length", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
    }
    text = json.dumps([content, settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_versions() -> dict[str, str]:
    """Versions of the code that computes the numbers (Pillow resizes the images)."""
    import PIL
    import transformers

    from faithclip._version import __version__

    return {
        "faithclip": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
    }


def device_identity(handle: ModelHandle) -> dict[str, str]:
    """Where and in what precision the model computes: the device's kind (not its index, so the ranks of
    one job on cuda:0..N-1 share it), the GPU's name or, on a CPU, the processor's name and the instruction
    set torch dispatches to (another GPU model, another CPU vendor or another vector width runs other
    kernels, whose float results agree to rounding, not to the bit), the dtype."""
    device = handle.device
    identity = {"device": device.type, "dtype": str(handle.dtype).replace("torch.", "")}
    if device.type == "cuda":
        identity["gpu"] = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        identity["cpu"] = cpu_kind()
    return identity


def cpu_kind() -> str:
    """The processor's model name and torch's CPU capability, e.g. ``"AMD EPYC (AVX2)"``."""
    name = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("model name", "Model")):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def unreadable_words(handle: ModelHandle, names: list[str]) -> dict[str, list[str]]:
    """Per name, its words that the tokenizer maps to its unknown token (empty dict: all readable).

    A name with such a word reaches the text tower as ``<unk>``, so the model cannot tell it from any
    other name with an unknown word."""
    tokenizer = handle.tokenizer
    unknown = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
    if unknown is None:
        return {}
    out: dict[str, list[str]] = {}
    for name in names:
        words = [word for word in name.split() if unknown in tokenizer(word, add_special_tokens=False)["input_ids"]]
        if words:
            out[name] = words
    return out


def _without_provenance(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_provenance(v) for k, v in value.items() if k not in _CONFIG_PROVENANCE}
    if isinstance(value, list):
        return [_without_provenance(v) for v in value]
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
