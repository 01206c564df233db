"""Figures of explanations (map on the user's image, raw colour bar, title), faithclip.plot, Jupyter display,
the shared report page, and the docs/ notebook executed offline."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

import faithclip
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


def test_figure_draws_at_image_resolution_with_raw_colour_bar_and_title(model, photo):
    image, caption = photo
    ex = faithclip.explain(model, image, caption)
    figure = ex.figure()
    axes = figure.axes
    colour_bar = [a for a in axes if a.get_label() == "<colorbar>"]
    assert len(colour_bar) == 1
    low, high = colour_bar[0].get_ylim()
    assert low == pytest.approx(float(ex.map.min()), abs=1e-9) and high == pytest.approx(float(ex.map.max()))
    title = figure._suptitle.get_text()
    assert caption in title and "attention_eclip" in title and f"{ex.score:+.3f}" in title and "cosine" in title
    main_image = axes[0].get_images()[0].get_array()
    assert main_image.shape[:2] == (120, 160)  # the user's image, not the 64 px crop
    png = ex._repr_png_()
    assert Image.open(io.BytesIO(png)).size[0] > 400


def test_warnings_are_shown_in_figures(model, photo):
    image, _ = photo
    ex = faithclip.explain(model, image, "a zebra")  # unknown word for shapes-clip
    assert ex.warnings
    texts = " ".join(t.get_text() for t in ex.figure().texts)
    assert "warning" in texts and "zebra" in texts


def test_plot_grid_methods_by_prompts_and_list_display(model, photo):
    image, caption = photo
    maps = [faithclip.explain(model, image, text, method) for method in ("attention_eclip", "grad_cam")
            for text in (caption, "a blue square")]
    figure = faithclip.plot(maps)
    image_axes = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert len(image_axes) == 2 * (2 + 1)  # rows: methods; columns: the image, then each prompt
    assert len(figure.axes) - len(image_axes) == 4  # one raw colour bar per map
    several = faithclip.explain(model, image, [caption, "a blue square"])
    assert isinstance(several, list) and several._repr_png_()[:4] == b"\x89PNG"


def test_page_is_self_contained_and_marks_bad_rows():
    page = html_page("t <x>", table(["a", "b"], [["1", "<2>"], ["3", "4"]], bad_rows=[1]))
    assert page.startswith("<!doctype html>") and "<meta charset='utf-8'>" in page
    assert "&lt;2&gt;" in page and "<tr class=bad>" in page and "overflow-x:auto" in page
    assert "http" not in page.replace("http-equiv", "")


def test_example_notebook_runs_offline():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is in the test extra (pip install -e '.[test]')")
    notebook = nbformat.read(ROOT / "docs" / "example.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # the explanation and the grid displayed themselves
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "torchvision" not in stderr
