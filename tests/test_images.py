"""prepare_user_image: every kind of input a person or API caller can send ends as RGB or a StudioError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import StudioError
from pipelines.images import prepare_user_image

MAX_PIXELS = 1024 * 1024


def prepare(image, **kwargs):
    kwargs.setdefault("max_pixels", MAX_PIXELS)
    return prepare_user_image(image, **kwargs)


def test_rgb_image_passes_through_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    result = prepare(Image.fromarray(pixels))
    assert result.mode == "RGB" and result.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(result), pixels)


@pytest.mark.parametrize("image", [None, "", "   "])
def test_missing_image_uses_the_callers_wording(image):
    with pytest.raises(StudioError, match="No pose image was given"):
        prepare(image, what="pose image")


def test_wrong_type_is_refused():
    with pytest.raises(StudioError, match="must be an image"):
        prepare(42)


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        prepare(str(tmp_path / "nope.png"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(StudioError, match="is empty"):
        prepare(str(path))


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(StudioError, match="not an image file"):
        prepare(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(noise).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StudioError, match="damaged"):
        prepare(str(path))


def test_path_is_read_into_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (8, 6), 77).save(path)
    result = prepare(str(path))
    assert result.mode == "RGB" and result.size == (8, 6)
    assert np.all(np.asarray(result) == 77)


def test_rgba_is_composited_onto_black():
    image = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    image.putpixel((1, 1), (200, 100, 50, 255))
    image.putpixel((2, 2), (200, 200, 200, 128))
    result = np.asarray(prepare(image))
    assert result[0, 0].tolist() == [0, 0, 0]
    assert result[1, 1].tolist() == [200, 100, 50]
    assert 95 <= result[2, 2, 0] <= 105


def test_a_picture_to_edit_is_composited_onto_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((1, 1), (200, 100, 50, 255))
    result = np.asarray(prepare(image, background="white"))
    assert result[0, 0].tolist() == [255, 255, 255] and result[1, 1].tolist() == [200, 100, 50]


def test_la_is_composited_onto_black():
    image = Image.new("LA", (4, 4), (255, 0))
    image.putpixel((0, 0), (180, 255))
    result = np.asarray(prepare(image))
    assert result[0, 0].tolist() == [180, 180, 180] and result[3, 3].tolist() == [0, 0, 0]


def test_palette_with_transparency_from_file_is_composited_onto_black(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 255, 255, 10, 200, 30] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    result = np.asarray(prepare(str(path)))
    assert result[0, 0].tolist() == [0, 0, 0]
    assert result[1, 1].tolist() == [10, 200, 30]


def test_palette_without_transparency_keeps_its_colours():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([255, 255, 255] + [0] * 765)
    assert np.all(np.asarray(prepare(image)) == 255)


@pytest.mark.parametrize(("dtype", "mode"), [("<u2", "I;16"), (">u2", "I;16B")])
def test_sixteen_bit_is_scaled_by_full_scale(dtype, mode):
    image = Image.fromarray(np.array([[0, 65535, 32768, 257]], dtype=dtype))
    assert image.mode == mode
    result = np.asarray(prepare(image))[0, :, 0]
    assert result.tolist() == [0, 255, 128, 1]


def test_sixteen_bit_png_file(tmp_path):
    path = tmp_path / "depth16.png"
    Image.fromarray(np.array([[1000, 65535]], dtype=np.uint16)).save(path)
    result = np.asarray(prepare(str(path)))[0, :, 0]
    assert result.tolist() == [4, 255]


def test_thirty_two_bit_integer_is_stretched_by_its_range():
    image = Image.fromarray(np.array([[1000, 3000, 5000]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(prepare(image))[0, :, 0].tolist() == [0, 128, 255]


def test_float_is_stretched_by_its_range_and_survives_nan():
    image = Image.fromarray(np.array([[0.25, 0.5, 0.75, np.nan]], dtype=np.float32))
    assert image.mode == "F"
    assert np.asarray(prepare(image))[0, :, 0].tolist() == [0, 128, 255, 0]


def test_constant_float_becomes_black():
    image = Image.fromarray(np.full((3, 3), 7.0, dtype=np.float32))
    assert np.all(np.asarray(prepare(image)) == 0)


def test_cmyk_becomes_rgb():
    result = prepare(Image.new("CMYK", (3, 3), (0, 255, 255, 0)))
    assert result.mode == "RGB"
    assert np.asarray(result)[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif)
    assert prepare(str(path)).size == (20, 40)
    assert prepare(Image.open(path)).size == (20, 40)


def test_too_large_image_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (2000, 1000)).save(path)

    def fail_load(self):
        raise AssertionError("decoded the pixels of an image that is too large")

    monkeypatch.setattr(Image.Image, "load", fail_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", fail_load)
    with pytest.raises(StudioError, match=r"2000x1000 = 2,000,000 pixels; the limit is 1,048,576 pixels"):
        prepare(str(path))


def test_too_large_pil_image_is_refused():
    with pytest.raises(StudioError, match="the limit is 100 pixels"):
        prepare(Image.new("RGB", (11, 10)), max_pixels=100)


@pytest.mark.parametrize("factor", [1.5, 3])
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, factor):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both must end as a StudioError.
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(100 * 100 / factor))
    with pytest.raises(StudioError, match="too large to open safely"):
        prepare(str(path), max_pixels=10**9)


def test_result_is_a_copy():
    image = Image.new("RGB", (2, 2), (1, 2, 3))
    result = prepare(image)
    result.putpixel((0, 0), (9, 9, 9))
    assert image.getpixel((0, 0)) == (1, 2, 3)
