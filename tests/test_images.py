"""Reference images of every kind come back as upright 8-bit RGB; bad files raise ImageError naming them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mediaio.images import ImageError, load_reference_image

SIZE = (40, 30)  # width, height


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def test_rgb_passes_through(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "a.png")), array)


def test_rgba_is_composited_on_white(tmp_path):
    array = np.zeros((30, 40, 4), dtype=np.uint8)
    array[..., 0] = 200  # red under the alpha everywhere
    array[:, :20, 3] = 255  # left half opaque red
    array[:, 20:, 3] = 0  # right half fully transparent: white, not red
    Image.fromarray(array, "RGBA").save(tmp_path / "a.png")
    out = _rgb(load_reference_image(tmp_path / "a.png"))
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 39], [255, 255, 255])


def test_half_transparent_blends(tmp_path):
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[..., 3] = 128  # black at ~50% over white
    Image.fromarray(array, "RGBA").save(tmp_path / "a.png")
    assert abs(int(_rgb(load_reference_image(tmp_path / "a.png"))[0, 0, 0]) - 127) <= 1


def test_grayscale_and_la(tmp_path):
    gray = np.full((30, 40), 77, dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "g.png"))[5, 5], [77, 77, 77])
    la = np.stack([gray, np.zeros_like(gray)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "la.png"))[5, 5], [255, 255, 255])


def test_palette_with_and_without_transparency(tmp_path):
    image = Image.new("P", SIZE, 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "p.png"))[0, 0], [10, 200, 30])
    image.save(tmp_path / "pt.png", transparency=1)
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "pt.png"))[0, 0], [255, 255, 255])


def test_cmyk(tmp_path):
    Image.new("CMYK", SIZE, (0, 255, 255, 0)).save(tmp_path / "c.tif")  # cyan 0, magenta+yellow full: red
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "c.tif"))[0, 0], [255, 0, 0])
    Image.new("CMYK", SIZE, (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    red = _rgb(load_reference_image(tmp_path / "c.jpg"))[0, 0].astype(int)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, suffix):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(3, axis=0)
    Image.fromarray(values).save(tmp_path / f"a{suffix}")
    with Image.open(tmp_path / f"a{suffix}") as opened:
        assert opened.mode.startswith("I")  # really 16 bit on disk
    out = _rgb(load_reference_image(tmp_path / f"a{suffix}"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[0, :, 0], out[0, :, 2])


def test_mode_i_and_float(tmp_path):
    Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.int32), "I").save(tmp_path / "i.tif")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "i.tif"))[0, :, 1], [0, 255, 128])
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "f.tif"))[0, :, 1], [0, 128, 255])
    Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32), "F").save(tmp_path / "f255.tif")
    np.testing.assert_array_equal(_rgb(load_reference_image(tmp_path / "f255.tif"))[0, :, 1], [0, 100, 255])


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((30, 40, 3), dtype=np.uint8)
    array[:, :20] = [255, 0, 0]  # left half red, right half black
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = _rgb(load_reference_image(tmp_path / "o.jpg"))
    assert out.shape == (40, 30, 3)  # upright: width and height swap
    assert out[2, 15, 0] > 200 and out[37, 15, 0] < 50  # the red half is now on top


def test_missing_empty_garbage_truncated(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.png: reference image is missing"):
        load_reference_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: reference image is empty"):
        load_reference_image(tmp_path / "empty.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=r"garbage\.png: not a readable image"):
        load_reference_image(tmp_path / "garbage.png")
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"truncated\.png: cannot decode image"):
        load_reference_image(tmp_path / "truncated.png")
    assert issubclass(ImageError, ValueError)
