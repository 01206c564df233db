"""The architecture configs and CLIP tokenizer shipped in the package: bench and verify --random-b32 need
nothing outside it (no ../shared/reference, no download)."""

from __future__ import annotations

import json

from faithclip.models.random_init import ARCHITECTURE_DIRS, TOKENIZER_DIR, random_b32


def test_configs_have_the_published_dimensions():
    dims = {name: json.loads((path / "config.json").read_text()) for name, path in ARCHITECTURE_DIRS.items()}
    assert [dims[n]["vision_config"]["patch_size"] for n in ("B/32", "B/16", "L/14")] == [32, 16, 14]
    assert (
        dims["L/14"]["vision_config"]["hidden_size"] == 1024
        and dims["L/14"]["vision_config"]["num_hidden_layers"] == 24
    )
    assert dims["L/14"]["projection_dim"] == 768 and dims["B/16"]["projection_dim"] == 512
    assert (TOKENIZER_DIR.parent / "LICENSE-openai-clip").read_text().startswith("MIT License")


def test_shipped_tokenizer_reads_like_openai_clip():
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]  # OpenAI's ids


def test_random_b32_builds_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared/reference here
    model = random_b32()
    assert model.patch_size == 32 and model.image_size == 224
    assert model.tokens(["a photo of a cat"]).input_ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
