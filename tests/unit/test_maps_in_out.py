"""Maps out (``Explanation.to_numpy``, ``--save-maps``) and maps in (``evaluate --maps``, ``evaluate_maps``).

The central check: maps written by an independent script that imports only numpy, in the documented
format, score exactly as the same method evaluated inside faithclip (same map values, same metric code
after the map: the figures are equal by construction, so compared exactly).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_evaluate import tiny_shapes_clip

from faithclip.data.folders import shapes_set
from faithclip.data.maps import MapFolder, MapsError, image_to_crop
from faithclip.evaluation import EvalConfig, EvaluationError, Evaluator
from faithclip.models.preprocess import ImagePreprocess

METRICS = ["deletion_gradeclip", "insertion_rise", "pointing_game", "energy_pointing_game", "segmentation"]

pytestmark = pytest.mark.usefixtures("one_thread")

# Reads faithclip's saved maps with numpy alone and writes them in the documented layout as bare .npy
# files (space inferred from the shape) named <case>__<method>.npy, as a third-party tool would.
SCRIPT = textwrap.dedent("""
    import sys, pathlib
    import numpy as np
    source, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    target.mkdir()
    for path in sorted(source.glob("*.npz")):
        with np.load(path) as archive:
            values = np.array(archive["map"], dtype=np.float64)
        np.save(target / (path.stem + ".npy"), values)
    assert "faithclip" not in sys.modules and "torch" not in sys.modules
""")


@pytest.fixture(scope="module")
def handle():
    return tiny_shapes_clip()


def _figures(results):
    return [(r["case"], r["method"], r["values"], r["skipped"]) for r in results["per_image"]], results["aggregate"]


def test_maps_written_by_a_numpy_script_score_as_the_method_inside_faithclip(handle, tmp_path):
    data = shapes_set(32, count=4)
    config = EvalConfig(
        model="tiny", data=data.name, methods=["attention_eclip"], metrics=METRICS, batch_size=8, save_maps=True
    )
    inside = Evaluator(handle, config).run(data, tmp_path / "inside", progress=False, report=False)
    saved = sorted(p.name for p in (tmp_path / "inside" / "maps").iterdir())
    assert saved == [f"scene0000{i}__attention_eclip.npz" for i in range(4)]
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "inside" / "maps"), str(tmp_path / "external")], check=True
    )
    maps_config = EvalConfig(
        model="tiny", data=data.name, metrics=METRICS, batch_size=8, maps=str(tmp_path / "external")
    )
    outside = Evaluator(handle, maps_config).run(data, tmp_path / "outside", progress=False, report=False)
    # same map values (float32 -> float64 -> float32 is exact), same code after the map: equal by construction
    assert _figures(outside) == _figures(inside)
    assert outside["config"]["maps"]["fingerprint"] == MapFolder(tmp_path / "external").fingerprint()
    import faithclip

    api = faithclip.evaluate_maps(
        handle, tmp_path / "external", tmp_path / "api", data="shapes", count=4, metrics=METRICS, batch_size=8
    )
    assert _figures(api) == _figures(inside)
    # a changed map changes the run identity: resuming in the same folder is refused
    first = sorted((tmp_path / "external").iterdir())[0]
    np.save(first, np.load(first) * 2)
    with pytest.raises(EvaluationError, match="the --maps files"):
        Evaluator(handle, maps_config).run(data, tmp_path / "outside", progress=False, report=False)


def test_cli_maps_refuses_recomputing_metrics_and_missing_files(handle, tmp_path, capsys):
    from faithclip.cli.main import main

    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "scene00000__mine.npy", np.arange(64.0).reshape(8, 8))  # the shipped model's patch grid
    assert (
        main(
            [
                "evaluate",
                "--maps",
                str(maps),
                "--metrics",
                "pointing_game,sanity_cascade",
                "--count",
                "1",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "cannot score sanity_cascade" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--maps",
                str(maps),
                "--metrics",
                "pointing_game",
                "--count",
                "2",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "1 maps are missing" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert (
        main(
            [
                "evaluate",
                "--maps",
                str(maps),
                "--metrics",
                "pointing_game,segmentation",
                "--count",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    assert [m["name"] for m in results["methods"]] == ["mine"]


def test_shapes_of_the_three_spaces(tmp_path):
    preprocess = ImagePreprocess(size=8, crop_height=8, crop_width=8)
    np.save(tmp_path / "a__m.npy", np.zeros((3, 5)))
    folder = MapFolder(tmp_path)
    with pytest.raises(MapsError, match="fits none"):
        folder.patch_map("a", "m", preprocess, (2, 2), (12, 8))


def test_image_space_maps_are_sampled_at_the_crops_pixel_centres():
    # a 16 x 8 (W x H) image, model input 4 x 4: resized to 8 x 4 (scale 1/2), crop columns 2..5.
    preprocess = ImagePreprocess(size=4, crop_height=4, crop_width=4)
    xs = np.arange(16, dtype=np.float64) + 0.5  # pixel centres
    linear = np.tile(3.0 * xs, (8, 1))  # (8, 16): a map linear in x, so bilinear sampling is exact
    crop = image_to_crop(linear, preprocess, (16, 8))
    # crop column c is resized column c + 2, whose centre is at (c + 2.5) * 2 in the image
    expected = np.tile(3.0 * (np.arange(4) + 2.5) * 2, (4, 1))
    torch.testing.assert_close(crop, torch.from_numpy(expected), rtol=0, atol=1e-12)  # float64 interpolation
    outside = linear.copy()
    outside[:, :3] = np.nan  # NaN outside the crop's region (image columns 4..11) is allowed
    outside[:, 13:] = np.nan
    torch.testing.assert_close(image_to_crop(outside, preprocess, (16, 8)), crop, rtol=0, atol=1e-9)
    outside[:, :6] = np.nan  # but the crop must be covered
    with pytest.raises(MapsError, match="does not cover"):
        image_to_crop(outside, preprocess, (16, 8))


def test_to_numpy_spaces(handle):
    from PIL import Image

    import faithclip

    image = Image.fromarray((np.random.default_rng(0).random((40, 64, 3)) * 255).astype(np.uint8))
    explanation = faithclip.explain(handle, image, "red circle")
    patch = explanation.to_numpy("patch")
    assert np.array_equal(patch, explanation.map.double().numpy())  # a copy of the same values
    crop = explanation.to_numpy("crop")
    assert crop.shape == (32, 32)
    # bilinear, align_corners=False, written out for one pixel: crop pixel (y, x) samples the patch grid at
    # ((y + .5) * gh / H - .5, (x + .5) * gw / W - .5), clamped to the grid
    gh, gw = patch.shape
    y, x = 13, 6
    sy = min(max((y + 0.5) * gh / 32 - 0.5, 0), gh - 1)
    sx = min(max((x + 0.5) * gw / 32 - 0.5, 0), gw - 1)
    y0, x0 = int(sy), int(sx)
    y1, x1 = min(y0 + 1, gh - 1), min(x0 + 1, gw - 1)
    fy, fx = sy - y0, sx - x0
    literal = (1 - fy) * ((1 - fx) * patch[y0, x0] + fx * patch[y0, x1]) + fy * (
        (1 - fx) * patch[y1, x0] + fx * patch[y1, x1]
    )
    assert crop[y, x] == pytest.approx(literal, rel=1e-12, abs=1e-15)
    full = explanation.to_numpy("image")
    assert full.shape == (40, 64)
    left, top, right, bottom = (int(round(v)) for v in explanation.region)
    # resized to 51 x 32 (long edge floor(32 * 64 / 40)), crop from column (51 - 32) // 2 = 9, i.e. image
    # columns 9 * 1.25 = 11.25 to 41 * 1.25 = 51.25, rounded
    assert (left, top, right, bottom) == (11, 0, 51, 40)
    assert np.isnan(full[:, :left]).all() and np.isnan(full[:, right:]).all()
    assert np.isfinite(full[top:bottom, left:right]).all()
    with pytest.raises(ValueError, match="space"):
        explanation.to_numpy("pixels")


def test_explain_save_maps_writes_the_raw_map_beside_the_json(tmp_path):
    from PIL import Image

    from faithclip.cli.main import main

    image = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((48, 80, 3)) * 255).astype(np.uint8)).save(image)
    assert (
        main(
            [
                "explain",
                str(image),
                "--text",
                "red circle",
                "--save-maps",
                "--no-progress",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "photo__red-circle__attention_eclip.json").read_text())
    with np.load(tmp_path / "out" / "photo__red-circle__attention_eclip.npz") as archive:
        assert str(archive["space"]) == "patch" and str(archive["text"]) == "red circle"
        assert np.array_equal(archive["map"], np.array(record["map"]))  # the same float64 values, two writers
        assert archive["image_size"].tolist() == [48, 80]
    assert (
        main(["explain", str(image), "--text", "x", "--side", "text", "--save-maps", "--out", str(tmp_path / "t")]) == 2
    )
