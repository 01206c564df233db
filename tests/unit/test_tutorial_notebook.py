"""docs/tutorial.ipynb (real photos, the ViT-B/32 architecture with random weights loaded from an OpenAI-format
checkpoint) runs offline, writes nothing into the repository, and still prints what it stores.

The oracle is the notebook as committed, with its outputs (the house pattern of docs/example.ipynb), plus facts
known by construction that the stored outputs must show: the checkpoint's conversion is exact (the same float32
values copied, so the two models' embeddings are the same computation), the VOC samples give 7 (photo, class)
cases (2 + 3 + 2 classes present), and the check detects LeGrad's declared departure and none for Attention-ECLIP.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from conftest import needs_reference

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
ROUNDED = 2e-3  # the notebook prints numbers rounded to 3 or 4 decimals


def _repository_files() -> set[str]:
    """Every file under the repository root but git's, caches' and the virtual environment's."""
    skipped = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    files = set()
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in skipped]
        files.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in names)
    return files


def _assert_same_printed(before, after, where: str) -> None:
    """Equal literals, floats within the printing's rounding."""
    if isinstance(before, float) or isinstance(after, float):
        assert before == pytest.approx(after, abs=ROUNDED), where
    elif isinstance(before, (tuple, list)) and isinstance(after, (tuple, list)):
        assert type(before) is type(after) and len(before) == len(after), where
        for old, new in zip(before, after):
            _assert_same_printed(old, new, where)
    elif isinstance(before, dict) and isinstance(after, dict):
        assert list(before) == list(after), where
        for key in before:
            _assert_same_printed(before[key], after[key], f"{where} [{key}]")
    else:
        assert before == after, where


def _printed(cell):
    """The literal value a cell printed (its last expression's repr), or None for a figure or an object's repr."""
    for output in cell.outputs:
        text = output.get("data", {}).get("text/plain")
        if text is None:
            continue
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError):
            return None
    return None


@needs_reference
@pytest.mark.slow  # about a minute: the ViT-B/32 architecture is built, saved, loaded, explained and evaluated
def test_tutorial_runs_offline_on_the_voc_photos_and_its_stored_outputs_are_current():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is in the test extra (pip install -e '.[test]')")
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest; the kernel inherits it: no download possible
    stored = nbformat.read(NOTEBOOK, as_version=4)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    files_before = _repository_files()
    nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    assert _repository_files() == files_before  # everything it wrote went to its temporary directory

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert len([output for output in outputs if "image/png" in output.get("data", {})]) >= 2  # explanation, grid
    stderr = "".join(output.get("text", "") for output in outputs if output.get("name") == "stderr")
    assert "torchvision" not in stderr
    # every code cell is introduced by a sentence saying what it shows
    cells = notebook.cells
    assert all(cells[i - 1].cell_type == "markdown" for i, cell in enumerate(cells) if cell.cell_type == "code" and i)

    for old, new in zip([c for c in stored.cells if c.cell_type == "code"], code, strict=True):
        kept = [output for output in new.outputs if output.get("name") != "stderr"]
        assert [output.output_type for output in old.outputs] == [output.output_type for output in kept], new.source
        for before, after in zip(old.outputs, kept):
            assert sorted(before.get("data", {})) == sorted(after.get("data", {})), new.source
        _assert_same_printed(_printed(old), _printed(new), new.source)

    printed = {cell.source.splitlines()[-1]: _printed(cell) for cell in code}
    conversion = next(value for line, value in printed.items() if "float(difference)" in line)
    assert conversion == ("openai", "round_half_even", 0.0)  # OpenAI's pipeline; the converted weights are the same
    table = next(value for line, value in printed.items() if line == "table")
    assert list(table) == ["-", "attention_eclip", "grad_cam", "rollout"]
    for rows in table.values():
        for mean, low, high in rows.values():
            assert 0 <= low <= mean <= high <= 1
    # 7 cases: a pointing game's mean is a multiple of 1/7
    assert all(round(rows["pointing_game.hit"][0] * 7, 2) % 1 == 0 for rows in table.values())
    cards = next(value for line, value in printed.items() if "card[" in line)
    assert cards["attention_eclip"] == [("P1 image", "pass"), ("P1 text", "pass"), ("claims", "pass")]
    assert ("P1 image", "declared departure") in cards["legrad"] and ("claims", "pass") in cards["legrad"]
