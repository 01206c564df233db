"""Converted OpenAI / open_clip checkpoints must compute what the OpenAI CLIP architecture computes.

The oracle is ``tests/reference/openai_clip_reference.py``, a CLIP in the OpenAI checkpoint layout
written here from the paper's description, sharing no code with transformers: we randomise it
(LayerNorms and ``logit_scale`` included, so no block is an identity), save its state dict in each
supported container, load it back through ``load_openai_checkpoint`` and compare the features.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import B32_DIR, needs_reference
from faithclip.errors import ModelError
from faithclip.models.openai_checkpoint import convert_openai_state_dict, load_openai_checkpoint

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
B32_CONFIG = REPO_ROOT / ".." / "shared" / "reference" / "openai-clip-vit-base-patch32" / "config.json"
TOLERANCE = 1e-5  # float32, max abs difference


def _import_reference():
    path = TESTS_DIR / "reference" / "openai_clip_reference.py"
    spec = importlib.util.spec_from_file_location("openai_clip_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _import_reference()

TINY = {
    "embed_dim": 32,
    "image_resolution": 16,
    "vision_patch_size": 8,
    "vision_width": 64,
    "vision_layers": 2,
    "context_length": 9,
    "vocab_size": 50,
    "text_width": 64,
    "text_layers": 2,
}
# (patch size, grid, vision width -> heads = width // 64, text width)
SHAPES = [
    pytest.param(8, 2, 64, 64, id="patch8-grid2-1head"),
    pytest.param(4, 4, 128, 64, id="patch4-grid4-2heads"),
    pytest.param(5, 3, 192, 128, id="patch5-grid3-3heads-text2heads"),
]


def _tiny(**overrides) -> dict:
    return {**TINY, **overrides}


def _randomised(dims: dict, seed: int = 0, activation: type[nn.Module] | None = None):
    """A reference CLIP with every parameter random, scaled so activations stay of order one."""
    extra = {"activation": activation} if activation is not None else {}
    with torch.device("meta"):  # every parameter is overwritten below; skip the default init
        model = reference.CLIP(**dims, **extra)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in ("visual.proj", "text_projection"):  # (width, embed), used as x @ proj
                parameter.normal_(0.0, parameter.shape[0] ** -0.5, generator=generator)
            elif name == "logit_scale":
                parameter.uniform_(1.0, 3.0, generator=generator)
            elif "embedding" in name:
                parameter.normal_(0.0, 0.5, generator=generator)
            elif parameter.ndim >= 2:  # Linear (out, in), in_proj (3w, w), conv (w, 3, p, p)
                parameter.normal_(0.0, parameter[0].numel() ** -0.5, generator=generator)
            else:
                parameter.normal_(0.0, 0.1, generator=generator)  # biases
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
    return model


def _images(dims: dict, batch: int = 3, seed: int = 1) -> torch.Tensor:
    size = dims["image_resolution"]
    return torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _texts(dims: dict, eot_positions: list[int], pad_with_eot: bool = False, seed: int = 2):
    """OpenAI-style token rows: SOT, words, EOT at ``eot_positions``, then padding."""
    vocab, context = dims["vocab_size"], dims["context_length"]
    sot, eot = vocab - 2, vocab - 1
    generator = torch.Generator().manual_seed(seed)
    rows = torch.zeros((len(eot_positions), context), dtype=torch.long)  # OpenAI pads with 0
    for row, position in zip(rows, eot_positions, strict=True):
        row[0] = sot
        row[1:position] = torch.randint(0, vocab - 2, (position - 1,), generator=generator)
        row[position:] = eot if pad_with_eot else 0
        row[position] = eot
    return rows


def _features(model, images: torch.Tensor, texts: torch.Tensor, **text_kwargs):
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=images).pooler_output
        text_features = model.get_text_features(input_ids=texts, **text_kwargs).pooler_output
    return image_features, text_features


def _max_differences(oracle, model, images, texts, **text_kwargs) -> tuple[float, float]:
    with torch.no_grad():
        expected_image = oracle.encode_image(images)
        expected_text = oracle.encode_text(texts)
    image_features, text_features = _features(model, images, texts, **text_kwargs)
    assert image_features.shape == expected_image.shape
    assert text_features.shape == expected_text.shape
    return (
        (image_features - expected_image).abs().max().item(),
        (text_features - expected_text).abs().max().item(),
    )


def _assert_matches(oracle, model, dims: dict, **text_kwargs) -> None:
    texts = _texts(dims, eot_positions=[2, dims["context_length"] - 1, dims["context_length"] // 2])
    image_diff, text_diff = _max_differences(oracle, model, _images(dims), texts, **text_kwargs)
    assert image_diff <= TOLERANCE, f"image features differ by {image_diff:.2e}"
    assert text_diff <= TOLERANCE, f"text features differ by {text_diff:.2e}"


@pytest.mark.parametrize(("patch", "grid", "vision_width", "text_width"), SHAPES)
def test_pt_state_dict_matches_reference(tmp_path, patch, grid, vision_width, text_width):
    dims = _tiny(
        vision_patch_size=patch,
        image_resolution=patch * grid,
        vision_width=vision_width,
        text_width=text_width,
    )
    oracle = _randomised(dims, seed=patch)
    path = tmp_path / "model.pt"
    torch.save(oracle.state_dict(), path)

    model = load_openai_checkpoint(path)

    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.patch_size, vision.image_size) == (patch, patch * grid)
    assert vision.num_attention_heads == vision_width // 64
    assert text.num_attention_heads == text_width // 64
    assert (text.vocab_size, text.max_position_embeddings) == (50, 9)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_matches(oracle, model, dims)


def test_logits_and_logit_scale_match_reference(tmp_path):
    oracle = _randomised(TINY, seed=3)
    model = convert_openai_state_dict(oracle.state_dict())
    images = _images(TINY)
    texts = _texts(TINY, eot_positions=[3, 5])
    with torch.no_grad():
        expected_per_image, expected_per_text = oracle(images, texts)
        output = model(input_ids=texts, pixel_values=images)
    assert model.logit_scale.item() == oracle.logit_scale.item()
    torch.testing.assert_close(output.logits_per_image, expected_per_image, rtol=0, atol=1e-4)
    torch.testing.assert_close(output.logits_per_text, expected_per_text, rtol=0, atol=1e-4)


@pytest.mark.parametrize("pad_with_eot", [False, True], ids=["zero-padding", "eot-padding"])
def test_text_padding_after_eot_is_ignored(pad_with_eot):
    """OpenAI pools at the first EOT; padding after it (zeros or more EOTs) must change nothing."""
    oracle = _randomised(TINY, seed=4)
    model = convert_openai_state_dict(oracle.state_dict())
    eot_positions = [1, 4, TINY["context_length"] - 1]
    texts = _texts(TINY, eot_positions, pad_with_eot=pad_with_eot)
    attention_mask = (torch.arange(TINY["context_length"]) <= torch.tensor(eot_positions)[:, None]).long()

    _, text_diff = _max_differences(oracle, model, _images(TINY), texts)
    _, masked_text_diff = _max_differences(oracle, model, _images(TINY), texts, attention_mask=attention_mask)

    assert text_diff <= TOLERANCE
    assert masked_text_diff <= TOLERANCE
    # The pooled position really is the EOT, not the last position (which would also "work" if
    # every row were full).
    with torch.no_grad():
        hidden = model.text_model(input_ids=texts).last_hidden_state
        pooled = model.text_model(input_ids=texts).pooler_output
    torch.testing.assert_close(pooled, hidden[torch.arange(3), torch.tensor(eot_positions)])


def test_pooling_is_openai_argmax_for_any_ids():
    """OpenAI pools at ``text.argmax(-1)`` for every input, even rows without start or end token."""
    oracle = _randomised(TINY, seed=11)
    model = convert_openai_state_dict(oracle.state_dict())
    texts = torch.tensor(
        [
            [3, 40, 7, 47, 9, 0, 0, 0, 0],  # largest id at position 3
            [5, 5, 5, 5, 5, 5, 5, 5, 46],  # largest id last
        ]
    )
    _, text_diff = _max_differences(oracle, model, _images(TINY), texts)
    assert text_diff <= TOLERANCE


def test_safetensors_file(tmp_path):
    oracle = _randomised(TINY, seed=5)
    path = tmp_path / "model.safetensors"
    save_file({key: value.contiguous() for key, value in oracle.state_dict().items()}, path)
    _assert_matches(oracle, load_openai_checkpoint(path), TINY)


def test_open_clip_training_checkpoint_with_module_prefix(tmp_path):
    oracle = _randomised(TINY, seed=6)
    path = tmp_path / "epoch_3.pt"
    torch.save(
        {
            "epoch": 3,
            "name": "ViT-tiny-quickgelu",
            "state_dict": {f"module.{key}": value for key, value in oracle.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        },
        path,
    )
    _assert_matches(oracle, load_openai_checkpoint(path), TINY)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive(tmp_path):
    dims = _tiny(vision_patch_size=4, image_resolution=12, vision_width=128)
    oracle = _randomised(dims, seed=7)
    scripted = _randomised(dims, seed=7)
    # OpenAI's released archives carry these scalars beside the weights.
    scripted.register_buffer("input_resolution", torch.tensor(dims["image_resolution"]))
    scripted.register_buffer("context_length", torch.tensor(dims["context_length"]))
    scripted.register_buffer("vocab_size", torch.tensor(dims["vocab_size"]))
    example = (_images(dims, batch=2), _texts(dims, eot_positions=[3, 5]))
    with torch.no_grad():
        traced = torch.jit.trace(scripted, example)
    path = tmp_path / "ViT-tiny.pt"  # OpenAI's archives have the same suffix as state dicts
    torch.jit.save(traced, str(path))

    _assert_matches(oracle, load_openai_checkpoint(path), dims)


def test_fp16_checkpoint_loads_as_float32(tmp_path):
    """OpenAI released fp16 weights; the model must come back in float32 with those values."""
    oracle = _randomised(TINY, seed=8).half().float()
    path = tmp_path / "model.pt"
    torch.save({key: value.half() for key, value in oracle.state_dict().items()}, path)
    model = load_openai_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_matches(oracle, model, TINY)


def test_gelu_checkpoint_needs_explicit_hidden_act(tmp_path):
    oracle = _randomised(TINY, seed=9, activation=nn.GELU)
    path = tmp_path / "laion.pt"
    torch.save(oracle.state_dict(), path)

    _assert_matches(oracle, load_openai_checkpoint(path, hidden_act="gelu"), TINY)
    image_diff, _ = _max_differences(oracle, load_openai_checkpoint(path), _images(TINY), _texts(TINY, [3]))
    assert image_diff > 1e-3, "quick_gelu and gelu should give different features"


def test_config_uses_eager_attention_and_openai_pooling():
    model = convert_openai_state_dict(_randomised(TINY).state_dict())
    assert model.config._attn_implementation == "eager"
    assert model.vision_model.config._attn_implementation == "eager"
    assert model.text_model.config._attn_implementation == "eager"
    assert model.config.text_config.eos_token_id == 2  # transformers' argmax-of-ids branch
    assert model.config.projection_dim == TINY["embed_dim"]
    assert math.isclose(model.logit_scale.item(), _randomised(TINY).logit_scale.item())


# --- errors ------------------------------------------------------------------------------------


def test_resnet_checkpoint_is_refused():
    state_dict = _randomised(TINY).state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
    state_dict["visual.layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state_dict["visual.attnpool.positional_embedding"] = torch.zeros(50, 2048)
    with pytest.raises(ModelError, match="ResNet CLIP is not supported; faithclip explains ViT CLIPs"):
        convert_openai_state_dict(state_dict)


def test_missing_key_is_named():
    state_dict = _randomised(TINY).state_dict()
    del state_dict["visual.transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(ModelError, match=r"1 missing key.*visual\.transformer\.resblocks\.1\.ln_2\.bias"):
        convert_openai_state_dict(state_dict)


def test_unexpected_key_is_named():
    state_dict = _randomised(TINY).state_dict()
    state_dict["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(64)
    with pytest.raises(ModelError, match=r"unexpected key.*ls_1\.gamma"):
        convert_openai_state_dict(state_dict)


def test_inconsistent_shapes_are_refused():
    state_dict = _randomised(TINY).state_dict()
    state_dict["visual.ln_post.weight"] = torch.ones(128)
    with pytest.raises(ModelError, match="inconsistent shapes"):
        convert_openai_state_dict(state_dict)


def test_random_file_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes()
    )
    with pytest.raises(ModelError, match="neither a PyTorch state dict nor a TorchScript archive"):
        load_openai_checkpoint(path)


def test_non_clip_state_dict_is_refused(tmp_path):
    path = tmp_path / "linear.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ModelError, match="not an OpenAI/open_clip ViT CLIP checkpoint"):
        load_openai_checkpoint(path)


def test_unknown_activation_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ModelError, match="hidden_act must be one of"):
        convert_openai_state_dict(_randomised(TINY).state_dict(), hidden_act="relu")
    with pytest.raises(ModelError, match="not found"):
        load_openai_checkpoint(tmp_path / "absent.pt")


# --- the real ViT-B/32 size ----------------------------------------------------------------------


def test_vit_b32_size_with_random_weights(tmp_path):
    if not B32_CONFIG.is_file():
        pytest.skip(f"ViT-B/32 reference config not found at {B32_CONFIG}")
    config = json.loads(B32_CONFIG.read_text())
    vision, text = config["vision_config"], config["text_config"]
    dims = {
        "embed_dim": config["projection_dim"],
        "image_resolution": vision["image_size"],
        "vision_patch_size": vision["patch_size"],
        "vision_width": vision["hidden_size"],
        "vision_layers": vision["num_hidden_layers"],
        "context_length": text["max_position_embeddings"],
        "vocab_size": text["vocab_size"],
        "text_width": text["hidden_size"],
        "text_layers": text["num_hidden_layers"],
    }
    oracle = _randomised(dims, seed=10)
    path = tmp_path / "ViT-B-32.safetensors"
    save_file({key: value.contiguous() for key, value in oracle.state_dict().items()}, path)

    model = load_openai_checkpoint(path)

    for name in (
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "patch_size",
        "image_size",
    ):
        assert getattr(model.config.vision_config, name) == vision[name], name
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        assert getattr(model.config.text_config, name) == text[name], name
    images = _images(dims, batch=2)
    texts = _texts(dims, eot_positions=[7, 76])
    image_diff, text_diff = _max_differences(oracle, model, images, texts)
    assert image_diff <= TOLERANCE, f"image features differ by {image_diff:.2e}"
    assert text_diff <= TOLERANCE, f"text features differ by {text_diff:.2e}"


@pytest.mark.parametrize("container", ["state_dict", "open_clip_training"])
def test_loaded_handle_uses_openai_preprocessing_rules(tmp_path, container):
    """OpenAI's ``_transform`` and open_clip's default transform crop with torchvision's rounding
    (half to even) and convert to RGB after the crop; the handle must say so and do so."""
    from faithclip.models.loading import load

    state = _randomised(TINY, seed=9).state_dict()
    path = tmp_path / "model.pt"
    torch.save(state if container == "state_dict" else {"epoch": 1, "state_dict": state}, path)
    handle = load(path)
    assert handle.preprocess_rules == {
        "pipeline": "openai",
        "crop_rounding": "round_half_even",
        "resize_rounding": "floor",
        "rgb_conversion": "pil_convert_after_crop",
        "exif_orientation": "ignore",
    }
    # 16 px model, a 23x16 image: no resize, excess 7, half 3.5 -> 4 (floor would give 3)
    assert handle.preprocess.crop_box(23, 16) == (4, 0, 20, 16)


@needs_reference
def test_a_checkpoint_without_a_tokenizer_is_explained_from_the_command_line_with_tokenizer(tmp_path, capsys):
    """An OpenAI .pt file holds no tokenizer: ``--tokenizer DIR`` gives it one on the command line (without
    it the prompt is refused in one line); the explained score is the model's own cosine."""
    from PIL import Image

    from faithclip.cli.main import main

    dims = _tiny(vocab_size=49408, context_length=77)
    path = tmp_path / "ViT-tiny.pt"
    torch.save(_randomised(dims, seed=11).state_dict(), path)
    Image.new("RGB", (20, 16), (30, 200, 40)).save(tmp_path / "green.png")
    argv = [
        "explain",
        str(tmp_path / "green.png"),
        "--text",
        "a green square",
        "--model",
        str(path),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main(argv + ["--tokenizer", str(B32_DIR)]) == 0
    record = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert "a green square" in json.dumps(record)
