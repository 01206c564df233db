"""CLIP preprocessing against transformers' own PIL processor; every image kind gives RGB or a clear error."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import B32_DIR, VOC_DIR, needs_reference
from faithclip.errors import ImageError
from faithclip.models.images import open_image, to_rgb
from faithclip.models.preprocess import ImagePreprocess

transformers = pytest.importorskip("transformers")


def _hf_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(B32_DIR)


@needs_reference
@pytest.mark.parametrize("size", [(500, 338), (338, 500), (224, 224), (225, 301), (640, 97)])
def test_matches_transformers_processor(size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = ImagePreprocess.from_json(B32_DIR / "preprocessor_config.json")(image)
    theirs = _hf_processor()(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 224, 224)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@needs_reference
@pytest.mark.parametrize("name", ["2011_000003", "2011_000006", "2011_000025"])
def test_real_voc_photos(name):
    image = open_image(VOC_DIR / "JPEGImages" / f"{name}.jpg")
    ours = ImagePreprocess.from_json(B32_DIR / "preprocessor_config.json")(image)
    theirs = _hf_processor()(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_crop_geometry():
    pre = ImagePreprocess()
    assert pre.resized_size(500, 338) == (331, 224)
    assert pre.crop_box(500, 338) == (53, 0, 277, 224)
    restored = pre.denormalize(pre.normalize(np.full((4, 4, 3), 200, dtype=np.uint8)))
    assert torch.allclose(restored, torch.full((3, 4, 4), 200.0), atol=1e-4)


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_modes_convert_with_defined_results(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    assert to_rgb(half).getpixel((0, 0)) == (0, 0, 0)
    assert to_rgb(Image.new("L", (8, 8), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (8, 8), 1)).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32))).getpixel((0, 0)) == (128, 128, 128)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    palette = Image.new("P", (8, 8), 3)
    assert to_rgb(palette).mode == "RGB"
    with pytest.raises(ImageError, match="NaN"):
        to_rgb(Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)))


def test_animated_takes_first_frame_with_warning(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = open_image(path)
    assert any("2 frames" in str(w.message) for w in caught)
    red, green, blue = image.getpixel((0, 0))
    assert red > 200 and blue < 50


@needs_reference
def test_unreadable_truncated_and_missing(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="not an image"):
        open_image(junk)
    data = (VOC_DIR / "JPEGImages" / "2011_000003.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated"):
        open_image(cut)
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "missing.png")
