"""``layer_indices`` is the one name of a list of layer indices (issue 24): ``Explanation``, ``MapResult`` and
``Probe`` say it, their JSON says it, and ``layers`` is left to the count of last layers. The old name stays a
deprecated keyword and attribute for one release: one warning at the user's line, the same value."""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from conftest import random_clip
from faithclip.explanation import Explanation
from faithclip.methods.context import MapResult
from faithclip.probe import Probe

ROOT = Path(__file__).resolve().parents[2]
RENAMED = ("Probe", "MapResult", "Explanation")


def _one_warning(caught: list[warnings.WarningMessage], words: str) -> None:
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in deprecations]
    assert words in str(deprecations[0].message) and deprecations[0].filename == __file__


def test_the_old_keyword_and_attribute_of_explanation_and_mapresult_warn_once_and_mean_the_same():
    for cls, extra in ((Explanation, dict(score=0.5, method="m", side="image")), (MapResult, dict(scores=None))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = cls(torch.zeros(2, 2), layers=[3, 4], **extra)
        _one_warning(caught, f"{cls.__name__}'s layers= is deprecated")
        new = cls(torch.zeros(2, 2), layer_indices=[3, 4], **extra)
        assert old.layer_indices == new.layer_indices == [3, 4]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert new.layers == [3, 4]
        _one_warning(caught, f"{cls.__name__}.layers is deprecated")
        with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="disagree; give layer_indices"):
            cls(torch.zeros(2, 2), layers=[1], layer_indices=[2], **extra)


def test_the_old_probe_keyword_captures_the_same_layers():
    model = random_clip(heads=2, layers=3, dtype=torch.float64)
    pixels = torch.randn(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    with Probe(model, "vision", layer_indices=[0, -1], capture=("attn",)) as probe:
        model.get_image_features(pixel_values=pixels.double())
    new = {i: c.attn for i, c in probe.captures.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Probe(model, "vision", layers=[0, -1], capture=("attn",)) as old_probe:
            model.get_image_features(pixel_values=pixels.double())
    _one_warning(caught, "Probe's layers= is deprecated")
    assert sorted(new) == sorted(old_probe.captures) == [0, 2]
    assert all(torch.equal(new[i], old_probe.captures[i].attn) for i in new)
    with pytest.warns(DeprecationWarning, match=r"Probe\.layers is deprecated"):
        assert old_probe.layers == old_probe.layer_indices == [0, 2]


def test_the_json_says_layer_indices_and_an_old_file_still_reads(tmp_path):
    explanation = Explanation(torch.arange(4.0).reshape(2, 2), 0.5, "grad_cam", "image", layer_indices=[11])
    path = explanation.save_json(tmp_path / "new.json")
    record = json.loads(path.read_text())
    assert record["layer_indices"] == [11] and "layers" not in record
    old = {**record, "layers": record.pop("layer_indices")}  # what faithclip explain wrote before the rename
    (tmp_path / "old.json").write_text(json.dumps(old))
    for read in (Explanation.load_json(path), Explanation.load_json(tmp_path / "old.json")):
        assert read.layer_indices == [11] and torch.equal(read.map, explanation.map.double())
        assert (read.score, read.method, read.side) == (0.5, "grad_cam", "image")


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _old_keyword_calls(path: Path) -> list[str]:
    """``Probe(..., layers=...)``-style calls of the renamed classes in one Python file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in RENAMED and any(k.arg == "layers" for k in node.keywords):
                found.append(f"{_shown(path)}:{node.lineno}: {name}(layers=...)")
    return found


# ``.layers`` that is not a list of indices: a module's list of blocks, an argparse count, an equivalence row's count
MODULE_OR_COUNT = re.compile(r"(encoder|backbone|backbone_of\(model\)|\.vit|^args|^r)$")


def _old_attribute_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "layers":
            if not MODULE_OR_COUNT.search(ast.unparse(node.value)):
                found.append(f"{_shown(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_code_says_layer_indices_everywhere():
    files = [p for folder in ("src", "tests", "tools", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]
    files = [p for p in files if p.resolve() != Path(__file__).resolve()]  # this file uses the old name on purpose
    assert len(files) > 100
    found = [line for path in files for line in _old_keyword_calls(path) + _old_attribute_reads(path)]
    assert found == []


def test_the_scan_finds_the_old_name(tmp_path):
    """The scan above can fail: it finds each old spelling in a file written here."""
    sample = tmp_path / "old_name.py"
    sample.write_text("p = Probe(m, 'vision', layers=[-1])\nx = faithclip.MapResult(a, b, layers=[1]).layers\n")
    found = _old_keyword_calls(sample) + _old_attribute_reads(sample)
    assert [line.split(": ", 1)[1] for line in found] == [
        "Probe(layers=...)",
        "MapResult(layers=...)",
        "faithclip.MapResult(a, b, layers=[1]).layers",
    ]


def test_the_docs_say_layer_indices():
    """README and docs/ (pages and notebooks): no renamed class called with layers=, no repr saying layers=[...]."""
    old = re.compile(r"\b(?:Probe|MapResult|Explanation)\([^)]*\blayers=|[(,] layers=\[")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.ipynb"))]
    found = [f"{page.relative_to(ROOT)}: {m.group(0)}" for page in pages for m in old.finditer(page.read_text())]
    assert found == []
    assert old.search('with faithclip.Probe(model.model, "vision", layers=[-1]) as probe:')  # the pattern can fail
