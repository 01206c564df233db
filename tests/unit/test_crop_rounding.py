"""Each loader builds the input its checkpoint's own pipeline builds (issue 10, principle P1).

transformers floors the centre-crop offset, torchvision's ``CenterCrop`` (OpenAI CLIP, open_clip) rounds
half to even; OpenAI converts to RGB after the crop (alpha dropped), transformers composites onto white
first. Every expected value below is worked out by hand in the comments, not by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import VOC_DIR, needs_reference, random_clip
from faithclip.errors import ModelError
from faithclip.models.loading import from_hf, load
from faithclip.models.preprocess import ImagePreprocess

pytestmark = pytest.mark.usefixtures("one_thread")

TRANSFORMERS = ImagePreprocess.for_pipeline("transformers", 224)
OPENAI = ImagePreprocess.for_pipeline("openai", 224)


# (image w, h) -> resized (w, h), floor box, round-half-even box; (left, top, right, bottom), crop 224.
CASES = [
    # 224 * 500 / 338 = 331.36 -> 331; excess 331 - 224 = 107, half 53.5: floor 53, half-even 54 (53 is odd)
    pytest.param((500, 338), (331, 224), (53, 0, 277, 224), (54, 0, 278, 224), id="500x338-left-differs"),
    # portrait of the same: the excess is vertical, so `top` differs
    pytest.param((338, 500), (224, 331), (0, 53, 224, 277), (0, 54, 224, 278), id="338x500-top-differs"),
    # 224 * 301 / 225 = 299.66 -> 299; excess 75, half 37.5: floor 37, half-even 38
    pytest.param((225, 301), (224, 299), (0, 37, 224, 261), (0, 38, 224, 262), id="225x301-top-differs"),
    # 224 * 640 / 427 = 335.74 -> 335; excess 111, half 55.5: floor 55, half-even 56
    pytest.param((640, 427), (335, 224), (55, 0, 279, 224), (56, 0, 280, 224), id="640x427-left-differs"),
    # 224 * 470 / 320 = 329 exactly; excess 105, half 52.5: floor 52, half-even 52 (52 is even)
    pytest.param((470, 320), (329, 224), (52, 0, 276, 224), (52, 0, 276, 224), id="470x320-half-even-is-floor"),
    # 224 * 640 / 97 = 1477.9 -> 1477; excess 1253, half 626.5: both 626 (626 is even)
    pytest.param((640, 97), (1477, 224), (626, 0, 850, 224), (626, 0, 850, 224), id="640x97-half-even-is-floor"),
    # 224 * 640 / 480 = 298.67 -> 298; excess 74, half 37: no half, both 37
    pytest.param((640, 480), (298, 224), (37, 0, 261, 224), (37, 0, 261, 224), id="640x480-even-excess"),
]


@pytest.mark.parametrize("size, resized, floor_box, round_box", CASES)
def test_resize_and_crop_box_by_hand(size, resized, floor_box, round_box):
    assert TRANSFORMERS.resized_size(*size) == OPENAI.resized_size(*size) == resized
    assert TRANSFORMERS.crop_box(*size) == floor_box
    assert OPENAI.crop_box(*size) == round_box


def test_half_to_even_is_not_half_up():
    # excess 105 -> 52.5: half-up would give 53, Python's round (torchvision's rule) gives 52
    assert OPENAI.crop_offset(329, 224) == 52
    assert OPENAI.crop_offset(331, 224) == 54  # 53.5 -> 54
    assert TRANSFORMERS.crop_offset(331, 224) == 53


def test_rules_are_named_recorded_and_read_back():
    assert TRANSFORMERS.rules == {
        "crop_rounding": "floor",
        "resize_rounding": "floor",
        "rgb_conversion": "composite_white_first",
        "exif_orientation": "apply",
    }
    assert OPENAI.rules == {
        "crop_rounding": "round_half_even",
        "resize_rounding": "floor",
        "rgb_conversion": "pil_convert_after_crop",
        "exif_orientation": "ignore",
    }
    for preprocess in (TRANSFORMERS, OPENAI):
        config = json.loads(json.dumps(preprocess.to_dict()))
        assert config["faithclip_rules"] == preprocess.rules
        assert ImagePreprocess.from_dict(config) == preprocess
    plain = {key: value for key, value in OPENAI.to_dict().items() if key != "faithclip_rules"}
    assert ImagePreprocess.from_dict(plain).pipeline == "transformers"  # a config from transformers itself
    assert ImagePreprocess(crop_rounding="round_half_even").pipeline == "custom"
    # a config saved before exif_orientation was named keeps the pipeline its recorded rules match
    older = {**OPENAI.to_dict(), "faithclip_rules": {k: v for k, v in OPENAI.rules.items() if k != "exif_orientation"}}
    assert ImagePreprocess.from_dict(older) == OPENAI


def test_unknown_rule_is_a_one_line_error():
    with pytest.raises(ModelError, match="choose one of floor, round_half_even") as caught:
        ImagePreprocess(crop_rounding="ceil")
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelError, match="choose one of transformers, openai"):
        ImagePreprocess.for_pipeline("timm", 224)


def _save_directory(directory, preprocessor: dict | None):
    random_clip().save_pretrained(directory)
    if preprocessor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


@pytest.mark.filterwarnings("ignore")
def test_transformers_directories_floor_and_a_recorded_rule_is_kept(tmp_path):
    transformers_config = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}}
    bare = load(_save_directory(tmp_path / "bare", None))
    with_config = load(_save_directory(tmp_path / "hf", transformers_config))
    converted = load(_save_directory(tmp_path / "converted", ImagePreprocess.for_pipeline("openai", 32).to_dict()))
    # 71x64 at 32 px: 32 * 71 / 64 = 35.5 -> 35; excess 3, half 1.5: floor 1, half-even 2
    for handle in (bare, with_config):
        assert handle.preprocess_rules["pipeline"] == "transformers"
        assert handle.preprocess.crop_box(71, 64) == (1, 0, 33, 32)
    assert converted.preprocess_rules == {"pipeline": "openai", **OPENAI.rules}
    assert converted.preprocess.crop_box(71, 64) == (2, 0, 34, 32)


def test_shipped_model_uses_transformers_rules():
    assert load("shapes-clip").preprocess_rules["pipeline"] == "transformers"


@needs_reference
def test_real_photo_pixels_shift_by_one_column():
    image = Image.open(VOC_DIR / "JPEGImages" / "2011_000003.jpg").convert("RGB")
    assert image.size == (500, 338)
    # the oracle: PIL's own bicubic resize to the hand-worked 331x224, cropped at columns 53 and 54
    resized = np.asarray(image.resize((331, 224), resample=Image.BICUBIC))  # (224, 331, 3)
    floor_crop = np.asarray(TRANSFORMERS.crop_image(image))
    round_crop = np.asarray(OPENAI.crop_image(image))
    np.testing.assert_array_equal(floor_crop, resized[:, 53:277])
    np.testing.assert_array_equal(round_crop, resized[:, 54:278])
    np.testing.assert_array_equal(round_crop[:, :-1], floor_crop[:, 1:])  # exactly a one-column shift
    difference = (OPENAI(image) - TRANSFORMERS(image)).abs().max().item()
    assert difference > 1.0  # the issue measured up to 2.9 after normalisation


def _half_transparent(width: int = 64, height: int = 32) -> Image.Image:
    """Left half opaque red; right half fully transparent with green stored underneath."""
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0, 255)
    pixels[:, width // 2 :] = (0, 255, 0, 0)
    return Image.fromarray(pixels, mode="RGBA")


def test_transparency_white_for_transformers_black_for_openai():
    # 64x32 -> resized 32x16 (16 * 64 / 32 = 32), crop 16 at left 8 under both rules (excess 16 is even):
    # crop column 0 is resized column 8 (deep in the red half), column 15 is resized column 23 (transparent)
    image = _half_transparent()
    white_first = np.asarray(ImagePreprocess.for_pipeline("transformers", 16).crop_image(image))
    after_crop = np.asarray(ImagePreprocess.for_pipeline("openai", 16).crop_image(image))
    assert white_first.shape == after_crop.shape == (16, 16, 3)
    np.testing.assert_array_equal(white_first[:, 0], np.tile([255, 0, 0], (16, 1)))
    np.testing.assert_array_equal(after_crop[:, 0], np.tile([255, 0, 0], (16, 1)))
    # transformers composites onto white; PIL resizes RGBA premultiplied, so OpenAI's transparent area is black
    np.testing.assert_array_equal(white_first[:, 15], np.tile([255, 255, 255], (16, 1)))
    np.testing.assert_array_equal(after_crop[:, 15], np.tile([0, 0, 0], (16, 1)))


def test_handle_converts_a_path_under_its_own_rule(tmp_path):
    path = tmp_path / "half.png"
    _half_transparent().save(path)
    handle = from_hf(random_clip(), preprocess=ImagePreprocess.for_pipeline("openai", 32))  # 32 px model
    pixels = handle.pixels(path)[0]  # (3, 32, 32); 64x32 needs no resize, and PIL's same-size resize is a copy
    black = handle.preprocess.normalize(np.zeros((1, 1, 3), dtype=np.uint8))[:, 0, 0]
    green = handle.preprocess.normalize(np.array([[[0, 255, 0]]], dtype=np.uint8))[:, 0, 0]
    # resized 64x32 (32 * 64 / 32 = 64: unchanged), crop 32 at left 16: crop column 31 is image column 47
    assert not torch.allclose(pixels[:, 0, 31], black)
    torch.testing.assert_close(pixels[:, 0, 31], green)  # alpha dropped, the stored colour shows
