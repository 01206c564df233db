"""The family registry and the families x methods table: what faithclip says it supports is what it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import faithclip
from faithclip.cli.methods import family_table
from faithclip.errors import MethodError, ModelError
from faithclip.models.families import FAMILIES, _load_families, family_for_model_type
from faithclip.registry import METHODS


def test_every_family_is_found_by_its_model_types():
    _load_families()
    assert "clip" in FAMILIES
    for family in FAMILIES.values():
        for model_type in family.model_types:
            assert family_for_model_type(model_type) is family


def test_an_unknown_model_type_is_one_line_naming_the_supported_ones(tmp_path):
    with pytest.raises(ModelError) as caught:
        family_for_model_type("wav2vec2", "the model")
    message = str(caught.value)
    assert "\n" not in message and "'wav2vec2'" in message and "'clip'" in message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ModelError, match="does not support"):
        faithclip.load(tmp_path)


def test_the_table_lists_every_method_and_family_and_agrees_with_supports():
    lines = family_table().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "method" and header[1] == "clip" and sorted(header[1:]) == sorted(FAMILIES)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert sorted(rows) == METHODS.names()
    for spec in METHODS:
        for family, cell in zip(header[1:], rows[spec.name]):
            assert (cell != "-") == spec.supports(family), (spec.name, family)


def test_the_docs_table_is_the_commands():
    """docs/families.md shows the families x methods table that ``faithclip methods --table`` prints from the
    methods' one declaration (``MethodSpec.families``, narrowed by ``family_sides``): a change of support
    that is not written down in the docs fails here."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "families.md").read_text().splitlines()
    start = docs.index(family_table().splitlines()[0])
    shown = "\n".join(docs[start : start + len(family_table().splitlines())])
    assert shown == family_table()


def test_every_built_in_method_declares_its_families():
    import inspect

    for spec in METHODS:
        if inspect.getmodule(spec.image or spec.text).__name__.startswith("faithclip.methods."):
            source = inspect.getsource(inspect.getmodule(spec.image or spec.text))
            assert "families=" in source, f"{spec.name} does not declare MethodSpec.families"


def test_a_method_refuses_a_family_it_does_not_support_in_one_line():
    spec = METHODS.get("grad_eclip")
    assert not spec.supports("imaginary")
    with pytest.raises(MethodError) as caught:
        spec.check_family("imaginary")
    assert "\n" not in str(caught.value) and "not available for imaginary models" in str(caught.value)
