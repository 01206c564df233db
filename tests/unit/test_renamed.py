"""Renamed public names (issue 24): the old names still work for one release, with a DeprecationWarning at
the user's line; faithclip's own modules that still say the old name stay quiet. And the shapes-model
property that replaced a guess from the model's name."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from faithclip.models.clip import ModelHandle
from faithclip.models.preprocess import ImagePreprocess


def test_the_clip_names_are_deprecated_aliases_of_the_family_neutral_ones():
    with pytest.warns(DeprecationWarning, match=r"ClipHandle is deprecated .* use ModelHandle") as caught:
        from faithclip.models.clip import ClipHandle
    assert ClipHandle is ModelHandle and caught[0].filename == __file__
    with pytest.warns(DeprecationWarning, match=r"ClipPreprocess is deprecated .* use ImagePreprocess"):
        from faithclip.models.preprocess import ClipPreprocess
    assert ClipPreprocess is ImagePreprocess
    import faithclip.models.clip as clip_module

    with pytest.raises(AttributeError, match="no attribute 'ClipThing'"):
        clip_module.ClipThing  # noqa: B018  (another name is still an AttributeError)


def test_faithclips_own_modules_do_not_warn_about_names_they_still_use():
    code = "import faithclip.evaluation, faithclip.models.families.blip, faithclip.cli.main"
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_verify_picks_shapes_scenes_by_the_models_training_not_its_name(tiny):
    from faithclip.verification import VOC_TEXTS, default_inputs

    _, texts = default_inputs(replace(tiny, name="my-shapes-lookalike"), [], None)
    assert texts == list(VOC_TEXTS)  # "shapes" in the name alone no longer decides
    images, texts = default_inputs(replace(tiny, name="anything", trained_on_shapes=True), [], None)
    assert len(images) == 4 and texts != list(VOC_TEXTS) and images[0].size == (tiny.image_size,) * 2


def test_verify_says_which_images_it_took_and_where_it_looked(tiny, tmp_path, monkeypatch):
    from faithclip.verification import default_inputs, input_origin

    monkeypatch.chdir(tmp_path)  # no ../shared below this working directory
    images, _ = default_inputs(tiny, [], None)
    said = input_origin(tiny, [])
    assert len(images) == 3 and "3 shapes-world scenes" in said and "no photos in" in said
    assert images[0].size == (tiny.image_size * 4 // 3, tiny.image_size)
    photos = tmp_path / "work" / "shared" / "reference" / "voc2011-samples" / "JPEGImages"
    photos.mkdir(parents=True)
    images[0].save(photos / "a.jpg")
    monkeypatch.chdir(tmp_path / "work" / "shared")  # ../shared/reference/... now exists
    assert str(photos.resolve()) in input_origin(tiny, []) and len(default_inputs(tiny, [], None)[0]) == 1
    assert input_origin(tiny, ["x.png", "y.png"]) == "the 2 given image(s)"


def test_the_loader_sets_trained_on_shapes_from_the_directory(tmp_path):
    import faithclip
    from conftest import random_clip
    from faithclip.models.loading import from_hf, load

    assert faithclip.load("shapes-clip").trained_on_shapes
    assert not from_hf(random_clip()).trained_on_shapes
    model = random_clip()
    model.save_pretrained(tmp_path / "shapes-named")
    assert not load(tmp_path / "shapes-named").trained_on_shapes
