"""`faithclip audit` on a user-given checkpoint directory (real B/32 config and tokenizer, tiny random weights)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from conftest import B32_DIR, VOC_DIR
from faithclip.cli.main import main


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    if not B32_DIR.is_dir():
        pytest.skip("../shared/reference is not available")
    config = transformers.CLIPConfig.from_pretrained(B32_DIR)
    config.vision_config.num_hidden_layers = 2
    config.text_config.num_hidden_layers = 2
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("user-checkpoint")
    transformers.CLIPModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "preprocessor_config.json"):
        shutil.copy(B32_DIR / name, directory / name)
    return directory


def test_audit_runs_on_a_user_checkpoint_directory(checkpoint_dir, tmp_path, capsys):
    images = sorted(str(p) for p in (VOC_DIR / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "audit.json"
    code = main(["audit", "--model", str(checkpoint_dir), "--images", *images,
                 "--class-names", str(VOC_DIR / "class_names.txt"), "--map-images", "1", "--deletion-steps", "4",
                 "--json", str(out), "--html", str(tmp_path / "audit.html")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "official pipeline" in printed and "one-head" in printed
    results = json.loads(out.read_text())
    assert results["images"] == 3 and results["model"] == str(checkpoint_dir)
    assert "<section" in (tmp_path / "audit.html").read_text()
