"""Figures of explanations (map on the user's image, raw colour bar, title), faithclip.plot, Jupyter display,
the shared report page, and the docs/ notebook executed offline."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faithclip
from faithclip.report.colour import DIVERGING_CMAP, SEQUENTIAL_CMAP, colour_scale, scale_groups
from faithclip.report.figures import VIEWS, Canvas, bounded_rgb, figure_bytes
from faithclip.report.page import html_page, table
from faithclip.shapes.world import ShapesWorld

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return faithclip.load()


@pytest.fixture(scope="module")
def photo():
    scene = ShapesWorld(image_size=64).multi_object_set(1, seed=3).scene(0)
    return scene.image.resize((160, 120)), scene.caption  # non-square: the crop is 120x120 in the middle


def test_explanation_knows_the_region_of_the_image_its_map_covers(model, photo):
    image, caption = photo
    ex = faithclip.explain(model, image, caption)
    # shortest edge 120 -> 64: resized 85x64, crop 64 from column (85-64)//2 = 10; back to the original: x * 160/85
    left, top, right, bottom = ex.region
    assert (top, bottom) == (0.0, 120.0)
    assert left == pytest.approx(10 * 160 / 85) and right == pytest.approx(74 * 160 / 85)
    assert ex.source_image.size == (160, 120)
    record = ex.to_dict()
    assert "source_image" not in record and tuple(record["region"]) == ex.region


def _drawn(figure):
    """Lay the figure out (constrained layout runs at draw time) so axes positions are final."""
    figure_bytes(figure, "png", dpi=50)
    return figure


def test_figure_draws_at_image_resolution_with_zero_based_colour_bar_and_title(model, photo):
    image, caption = photo
    ex = faithclip.explain(model, image, caption)
    figure = _drawn(ex.figure())
    assert len(figure.colour_bars) == 1
    bar, panel, scale = figure.colour_bars[0]
    low, high = bar.get_ylim()
    # a non-negative map: the bar runs from 0 (not from the map's minimum) to the map's maximum
    assert float(ex.map.min()) >= 0 and low == 0.0 and high == pytest.approx(float(ex.map.max()))
    assert "0" in [t.get_text() for t in bar.get_yticklabels()]
    title = figure._suptitle.get_text()
    assert caption in title and "attention_eclip" in title and f"{ex.score:+.3f}" in title and "cosine" in title
    panels = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert panels[0].get_images()[0].get_array().shape[:2] == (120, 160)  # the user's image, not the 64 px crop
    heights = [a.get_position().height for a in panels] + [bar.get_position().height]
    assert heights == pytest.approx([heights[0]] * len(heights), rel=1e-3)  # equal panels, bar as tall
    png = ex._repr_png_()
    assert Image.open(io.BytesIO(png)).size[0] > 400


def test_colour_scales_by_hand():
    # non-negative maps: 0 to the largest value, sequential
    scale = colour_scale([np.array([[0.0, 0.5], [1.0, 2.0]]), np.array([[0.0, 1.0]])])
    assert (scale.low, scale.high, scale.signed, scale.extend) == (0.0, 2.0, False, "neither")
    assert scale.ticks() == [0.0, 1.0, 2.0] and scale.cmap == SEQUENTIAL_CMAP
    # RISE's map of an absent prompt, all negative: centred on 0, so it is not a bright hot spot
    rise = colour_scale([np.array([-0.355, -0.315])])
    assert (rise.low, rise.high, rise.signed) == (-0.355, 0.355, True) and rise.cmap == DIVERGING_CMAP
    assert rise.position(np.array([-0.355, 0.0, 0.355])).tolist() == [0.0, 0.5, 1.0]
    # its colours: the diverging map at (v + 0.355) / 0.71, opacity 0.9 * (|v| / 0.355) ** 0.6
    from matplotlib import colormaps

    rgba = rise.rgba(np.array([-0.315]))
    expected = colormaps["RdBu_r"]((0.355 - 0.315) / 0.71)
    assert rgba[0, :3] == pytest.approx(expected[:3]) and rgba[0, 3] == pytest.approx(0.9 * (0.315 / 0.355) ** 0.6)
    assert rise.rgba(np.array([0.0]))[0, 3] == 0.0  # zero is transparent
    # clipping at the 90th percentile of 0..100 (numpy's linear percentile: exactly 90); the bar is pointed
    clipped = colour_scale([np.arange(101.0)], clip=90)
    assert clipped.high == 90.0 and clipped.extend == "max" and "90th" in clipped.label()
    assert colour_scale([np.zeros((2, 2))]).high == 1.0  # all zero: transparent on any positive scale
    with pytest.raises(ValueError, match="percentile"):
        colour_scale([np.ones(3)], clip=20)


def test_scale_groups_share_units_by_default():
    class Ex:
        def __init__(self, method, target="cosine"):
            self.method, self.target = method, target

    maps = [Ex("a"), Ex("b"), Ex("a"), Ex("a", "logit")]
    assert scale_groups(maps, "shared") == [0, 1, 0, 2]  # same method and target: same units
    assert scale_groups(maps, "all") == [0, 0, 0, 0] and scale_groups(maps, "per_map") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="scale must be"):
        scale_groups(maps, "global")


def test_warnings_are_shown_in_figures(model, photo):
    image, _ = photo
    ex = faithclip.explain(model, image, "a zebra")  # unknown word for shapes-clip
    assert ex.warnings
    texts = " ".join(t.get_text() for t in ex.figure().texts)
    assert "warning" in texts and "zebra" in texts


def test_plot_shares_one_scale_per_method_and_bars_match_panels(model, photo):
    image, caption = photo
    maps = [
        faithclip.explain(model, image, text, method)
        for method in ("attention_eclip", "rise")
        for text in (caption, "a blue square")
    ]
    figure = _drawn(faithclip.plot(maps))
    image_axes = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert len(image_axes) == 2 * (2 + 1)  # rows: methods; columns: the image, then each prompt
    scales = figure.colour_scales
    assert scales[0] == scales[1] and scales[2] == scales[3]  # a method's two prompts: one scale
    for first, second in ((0, 1), (2, 3)):  # its top: the largest |value| of the method's two maps
        top = max(float(maps[i].map.abs().max()) for i in (first, second))
        assert scales[first].high == pytest.approx(top)
    assert len(figure.colour_bars) == 2  # one bar per row, beside its last panel, as tall as it
    for bar, panel, scale in figure.colour_bars:
        assert bar.get_ylim() == pytest.approx((scale.low, scale.high))
        assert bar.get_position().height == pytest.approx(panel.get_position().height, rel=1e-3)
    for axes in image_axes:  # every map panel as tall as the image panel of its row
        assert axes.get_position().height == pytest.approx(image_axes[0].get_position().height, rel=1e-3)
    every = faithclip.plot(maps, scale="all")
    assert len(set(every.colour_scales)) == 1
    own = _drawn(faithclip.plot(maps, scale="per_map", view="contour"))
    assert len(own.colour_bars) == 4
    several = faithclip.explain(model, image, [caption, "a blue square"])
    assert isinstance(several, list) and several._repr_png_()[:4] == b"\x89PNG"


def test_formats_views_and_paper_resolution(model, photo, tmp_path):
    image, caption = photo
    ex = faithclip.explain(model, image, caption)
    assert ex.save_figure(tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in ex.save_figure(tmp_path / "f.svg").read_bytes()[:400]
    with Image.open(ex.save_figure(tmp_path / "f.png")) as png:
        assert png.info["dpi"] == pytest.approx((300, 300), abs=0.1)
    for view in VIEWS:
        assert figure_bytes(ex.figure(view=view), "png", dpi=40)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="view must be"):
        ex.figure(view="heat")


def test_figures_draw_a_bounded_copy_of_a_large_image(model):
    big = Image.new("RGB", (3000, 2000), (90, 90, 90))
    rgb, factor = bounded_rgb(big, max_pixels=60_000)
    assert rgb.shape == (200, 300, 3) and factor == pytest.approx(0.1)  # sqrt(60000 / 6e6) = 0.1
    ex = faithclip.explain(model, big, "a red square")
    canvas = Canvas(ex, max_pixels=60_000)
    assert canvas.full_size == (3000, 2000) and canvas.rgb.shape[:2] == (200, 300)
    # the model's centre crop (2000 x 2000 in the middle) in the drawn copy's pixels
    assert canvas.box == pytest.approx((50.0, 0.0, 250.0, 200.0), abs=0.6)
    assert canvas.map_pixels(ex).shape == (200, 200)
    assert "3000x2000 px" in canvas.size_text()


def test_save_overlay_is_the_raw_map_not_a_jet_min_max(model, photo, tmp_path):
    image, caption = photo
    ex = faithclip.explain(model, image, caption)
    crop = image.crop(tuple(round(v) for v in ex.region))
    with Image.open(ex.save_overlay(tmp_path / "o.png", crop)) as written:
        pixels = np.asarray(written.convert("RGB"), dtype=np.int16)
    base = np.asarray(crop.resize((crop.width, crop.height)), dtype=np.int16)
    zero = (ex.upsampled((crop.height, crop.width)) == 0).numpy()
    assert zero.any() and np.abs(pixels[:, : crop.width][zero] - base[zero]).max() <= 1  # transparent where 0
    as_array = ex.save_overlay(tmp_path / "a.png", np.asarray(crop))  # an array gives the same picture
    assert as_array.read_bytes() == (tmp_path / "o.png").read_bytes()  # same pixels, same encoder: exact


def test_page_is_self_contained_and_marks_bad_rows():
    page = html_page("t <x>", table(["a", "b"], [["1", "<2>"], ["3", "4"]], bad_rows=[1]))
    assert page.startswith("<!doctype html>") and "<meta charset='utf-8'>" in page
    assert "&lt;2&gt;" in page and "<tr class=bad>" in page and "overflow-x:auto" in page
    assert "http" not in page.replace("http-equiv", "")


@pytest.mark.slow  # regenerates the example notebook's stored outputs
def test_example_notebook_runs_offline_and_its_stored_outputs_are_current():
    """The notebook is committed with its outputs; executed again, every code cell gives outputs of the
    same kinds and the same printed values (numbers within 2e-3: they are rounded to 3 decimals in the
    notebook). Regenerate after a change: execute it with nbclient and write it back (stderr dropped)."""
    import ast

    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is in the test extra (pip install -e '.[test]')")
    stored = nbformat.read(ROOT / "docs" / "example.ipynb", as_version=4)
    notebook = nbformat.read(ROOT / "docs" / "example.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3  # the explanation and the grids displayed themselves
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "torchvision" not in stderr
    for old, new in zip(stored.cells, notebook.cells):
        if new.cell_type != "code":
            continue
        kept = [o for o in new.outputs if o.get("name") != "stderr"]
        assert [o.output_type for o in old.outputs] == [o.output_type for o in kept], new.source
        for before, after in zip(old.outputs, kept):
            assert sorted(before.get("data", {})) == sorted(after.get("data", {})), new.source
            text_before, text_after = before.get("data", {}).get("text/plain"), after.get("data", {}).get("text/plain")
            try:
                value_before, value_after = ast.literal_eval(text_before), ast.literal_eval(text_after)
            except (ValueError, SyntaxError, TypeError):
                continue  # a repr (figure, explanation): its PNG is what is shown
            if isinstance(value_after, tuple):
                assert value_before == pytest.approx(value_after, abs=2e-3), new.source
            else:
                assert value_before == value_after, new.source


def test_explain_draws_several_methods_in_one_grid_per_image(photo, tmp_path, capsys):
    import json

    from faithclip.cli.main import main

    image, caption = photo
    path = tmp_path / "photo.png"
    image.save(path)
    out = tmp_path / "out"
    command = ["explain", str(path), "--text", caption, "--text", "a blue square", "--no-progress", "--out", str(out)]
    assert main(command + ["--methods", "attention_eclip,grad_cam", "--format", "pdf"]) == 0
    record = json.loads((out / "explain.json").read_text())
    assert record["methods"] == ["attention_eclip", "grad_cam"] and len(record["explanations"]) == 4
    [figure] = record["figures"]  # one image: one grid, rows methods, columns prompts
    assert (out / figure["file"]).read_bytes()[:5] == b"%PDF-" and figure["file"].endswith(".pdf")
    by_method = {}
    for scale in figure["colour_scales"]:
        by_method.setdefault(scale["method"], set()).add((scale["low"], scale["high"]))
    assert all(len(scales) == 1 for scales in by_method.values())  # each method's prompts: one scale
    for scale in figure["colour_scales"]:  # the scale's top is the largest value of that method's maps
        maps = [
            json.loads((out / e["json"]).read_text())["map"]
            for e in record["explanations"]
            if e["method"] == scale["method"]
        ]
        assert scale["high"] == pytest.approx(max(abs(v) for m in maps for row in m for v in row))
    assert "data-colour-scales" in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(command + ["--methods", "attention_eclip", "--methods", "grad_cam"]) == 2  # not the last one kept
    assert "one comma list: --methods attention_eclip,grad_cam" in capsys.readouterr().err
    assert main(command + ["--methods", "attention_eclip,nope"]) == 2
    assert "unknown method nope" in capsys.readouterr().err
