"""The published choices are the defaults: lambda's span and q/k, each official variant's input rule, and
degenerate maps that say so (never NaN, never a silent empty map)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import faithclip
from conftest import random_clip, token_ids
from faithclip.explanation import map_warnings
from faithclip.methods.grad_eclip_official import variant_cap
from faithclip.models.loading import from_hf
from faithclip.shapes.world import ShapesWorld
from tolerance import assert_rounding_close


@pytest.fixture(scope="module")
def shapes():
    return faithclip.load("shapes-clip")


@pytest.fixture(scope="module")
def scenes(shapes):
    world = ShapesWorld(image_size=shapes.image_size, seed=0)
    return [Image.fromarray(image) for image in world.multi_object_set(6, seed=0).images], list(world.prompts)


def test_each_official_variant_keeps_its_own_input_rule():
    """1032 x 689 (the size of the published repository's whippet.png), patch 16. Evaluation script
    (lambda_qk=out_proj): short side capped at 640 -> scale 689/640, 958 x 640 -> int(958/16 + .5) = 60 columns,
    40 rows. Image notebook (lambda_qk=raw): no cap -> int(1032/16 + .5) = int(65.0) = 65 columns,
    int(689/16 + .5) = int(43.56) = 43 rows."""
    assert variant_cap("out_proj") == 640 and variant_cap("raw") is None and variant_cap("raw", 500) == 500
    handle = from_hf(random_clip(seed=1, heads=2, layers=1, width=16, image_size=32, patch_size=16))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (689, 1032, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = faithclip.explain(handle, image, token_ids([2]), "grad_eclip_official")
        notebook = faithclip.explain(handle, image, token_ids([2]), "grad_eclip_official", lambda_qk="raw")
    assert tuple(script.map.shape) == (40, 60) and script.options["cap"] == 640
    assert tuple(notebook.map.shape) == (43, 65) and notebook.options["cap"] is None
    assert script.input_size == (640, 960) and notebook.input_size == (688, 1040)


def test_text_lambda_default_is_the_whole_context_and_inner_is_an_option(shapes, scenes):
    images, _ = scenes
    context = faithclip.explain_text(shapes, images[0], "a red circle", "attention_eclip")
    inner = faithclip.explain_text(shapes, images[0], "a red circle", "attention_eclip", lambda_span="inner")
    assert context.options["lambda_span"] == "context" and inner.options["lambda_span"] == "inner"
    assert context.options["lambda_qk"] == "raw"
    # both are the model's own score; only lambda's normalisation span differs
    assert context.score == context.model_score  # one forward gives both: the same number by construction
    assert_rounding_close(inner.score, context.score, shapes.dtype)  # a second call of the same forward
    assert not torch.equal(context.map, inner.map)
    with pytest.raises(faithclip.errors.MethodError, match="lambda_span must be one of"):
        faithclip.explain_text(shapes, images[0], "a red circle", "attention_eclip", lambda_span="all")


def test_official_text_map_is_never_nan_and_all_zero_maps_warn(shapes, scenes):
    images, prompts = scenes
    words = ["red", "circle", "blue", "square", "green"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = faithclip.explain_text(shapes, images, words, "grad_eclip_official")
    assert all(bool(torch.isfinite(ex.map).all()) for ex in maps)
    zero = [ex for ex in maps if bool((ex.map == 0).all())]
    assert zero, "no one-word prompt gave an all-zero map here; the NaN case (0 / 0) was not exercised"
    assert all(any("all-zero map" in note for note in ex.warnings) for ex in zero)
    positive = [ex for ex in maps if ex.map.sum() > 0]
    assert positive and all(ex.map.sum().item() == pytest.approx(1.0) and not ex.warnings for ex in positive)


def test_map_warnings():
    assert map_warnings(torch.zeros(3, 3), "image")[0].startswith("all-zero map: no patch")
    assert map_warnings(torch.zeros(5), "text")[0].startswith("all-zero map: no word")
    assert map_warnings(torch.full((2, 2), 0.5), "image")[0].startswith("constant map")
    assert map_warnings(torch.tensor([0.0, 1.0, 0.0]), "text") == []
    assert map_warnings(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "image") == []
    assert "NaN" in map_warnings(torch.tensor([0.0, float("nan")]), "text")[0]


def test_cli_prints_the_warning_of_an_all_zero_text_map(shapes, scenes, tmp_path):
    images, prompts = scenes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = faithclip.explain_text(shapes, images[0], prompts, "attention_eclip")
    zero = [prompt for prompt, ex in zip(prompts, maps) if bool((ex.map == 0).all())]
    assert zero, "no all-zero text map on this scene"
    path = tmp_path / "scene.png"
    images[0].save(path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "faithclip",
            "explain",
            str(path),
            "--text",
            zero[0],
            "--side",
            "text",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "warning: all-zero map: no word has a positive contribution" in done.stdout


def test_every_json_file_is_strict(tmp_path):
    """One writer for every JSON file (records, demo, verify, bench, audit, check): NaN and infinities are
    null, tensors and numpy values are numbers or lists, anything else its string; strict parsers accept it."""
    import json
    from pathlib import Path

    from faithclip.explanation import json_bytes
    from faithclip.report.page import write_report

    def strict(text: str):
        def refuse(constant):
            raise ValueError(constant)

        return json.loads(text, parse_constant=refuse)

    record = {
        "nan": float("nan"),
        "inf": float("-inf"),
        "tensor": torch.tensor([1.5, float("nan")]),
        "scalar": np.float32(0.25),
        "path": Path("a/b.png"),
        "nested": [{"x": float("inf")}],
    }
    expected = {
        "nan": None,
        "inf": None,
        "tensor": [1.5, None],
        "scalar": 0.25,
        "path": "a/b.png",
        "nested": [{"x": None}],
    }
    assert strict(json_bytes(record).decode()) == expected
    json_path, _ = write_report(tmp_path, "thing", record, "<!doctype html><html></html>")
    assert strict(json_path.read_text()) == expected
    ex = faithclip.Explanation(map=torch.zeros(2, 2), score=float("nan"), method="m", side="image")
    ex.save_json(tmp_path / "ex.json")
    assert strict((tmp_path / "ex.json").read_text())["score"] is None
