"""Photo decoding and preprocessing: formats, EXIF, alpha, greyscale, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ftspl.engine.constants import Preprocess
from ftspl.engine.errors import ImageLoadError
from ftspl.engine.loading.photos import load_photo
from ftspl.engine.model.preprocess import photo_batch, resize_crop, to_tensor

#: an explicit transform: the engine has no default, a model's manifest always supplies one
PRE = Preprocess(image_size=224, crop_pct=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, np.full_like(x, 90)], axis=2), "RGB")


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp")])
def test_formats_decode_to_rgb(tmp_path, fmt, ext):
    p = tmp_path / f"a.{ext}"
    _gradient().save(p, format=fmt)
    img = load_photo(p)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_exif_orientation_is_applied(tmp_path):
    img = _gradient(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert load_photo(p).size == (20, 60)


def test_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((5, 5), (255, 0, 0, 255))
    p = tmp_path / "a.png"
    rgba.save(p)
    arr = np.asarray(load_photo(p))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[5, 5]) == (255, 0, 0)


def test_greyscale_promoted(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (8, 8), 100).save(p)
    arr = np.asarray(load_photo(p))
    assert arr.shape == (8, 8, 3) and (arr == 100).all()


def test_resize_crop_and_tensor():
    out = resize_crop(_gradient(640, 320), PRE)
    assert out.size == (PRE.image_size, PRE.image_size)
    t = to_tensor(_gradient(640, 320), PRE)
    assert t.shape == (3, PRE.image_size, PRE.image_size) and t.dtype == np.float32
    # a white pixel maps to (1 - mean) / std
    white = to_tensor(Image.new("RGB", (300, 300), "white"), PRE)
    expect = (1 - np.asarray(PRE.mean)) / np.asarray(PRE.std)
    assert np.allclose(white[:, 0, 0], expect, atol=1e-5)


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "file is empty"), (b"not an image at all", "not a readable image"), (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "")],
)
def test_bad_files_raise_one_line(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageLoadError) as ei:
        load_photo(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)) and "\n" not in msg and reason in msg


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "t.jpg"
    _gradient(256, 256).save(p, quality=90)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageLoadError):
        load_photo(p)


def test_pixel_cap(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(p)
    with pytest.raises(ImageLoadError, match="pixel limit"):
        load_photo(p, max_pixels=100 * 100)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_photo(tmp_path / "nope.jpg")


def test_unsupported_format(tmp_path):
    p = tmp_path / "a.gif"
    Image.new("RGB", (8, 8)).save(p, format="GIF")
    with pytest.raises(ImageLoadError, match="unsupported image format"):
        load_photo(p)


def test_batch_shape(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        _gradient(50 + i, 40).save(p)
        paths.append(p)
    assert photo_batch(paths, PRE).shape == (3, 3, PRE.image_size, PRE.image_size)
    assert photo_batch([], PRE).shape == (0, 3, PRE.image_size, PRE.image_size)
