"""`faithclip audit` on a user-given checkpoint directory (real B/32 config and tokenizer, tiny random weights)."""

from __future__ import annotations

import json

import pytest

from conftest import B32_DIR, VOC_DIR, save_reference_checkpoint
from faithclip.cli.main import main


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    if not B32_DIR.is_dir():
        pytest.skip("../shared/reference is not available")
    return save_reference_checkpoint(tmp_path_factory.mktemp("user-checkpoint"), layers=2)


def test_audit_runs_on_a_user_checkpoint_directory(checkpoint_dir, tmp_path, capsys):
    images = sorted(str(p) for p in (VOC_DIR / "JPEGImages").glob("*.jpg"))
    code = main(
        [
            "audit",
            "--model",
            str(checkpoint_dir),
            "--images",
            *images,
            "--class-names",
            str(VOC_DIR / "class_names.txt"),
            "--map-images",
            "1",
            "--deletion-steps",
            "4",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "official pipeline" in printed and "one-head" in printed
    results = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert results["images"] == 3 and results["model"] == str(checkpoint_dir)
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<meta charset='utf-8'>" in page and "<section" in page
