"""Photo decoding (PIL, torch-free): every check a user's photo passes before it becomes pixels.

The encoder's input transform lives in :mod:`ftspl.engine.model.preprocess`.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ftspl.engine.constants import MAX_FILE_BYTES, MAX_IMAGE_PIXELS
from ftspl.engine.errors import ImageLoadError
from ftspl.engine.loading.inputs import check_input_file

#: Formats a user may query with; PIL detects the real format from the bytes.
PHOTO_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


_PIL_LIMIT_LOCK = threading.Lock()
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let PIL open headers up to ``max_pixels`` (our cap is checked right after).

    PIL refuses images over twice its global ``MAX_IMAGE_PIXELS`` (89 M) inside
    ``Image.open``, before we see the size: without this, ``--max-pixels`` could
    not be raised above that. The global is only raised, never lowered, and
    only for the duration of the header read, under a lock.
    """
    default = Image.MAX_IMAGE_PIXELS
    if default is None or max_pixels <= default:
        yield
        return
    with _PIL_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = default


def _too_many_pixels(p: Path, size: str, max_pixels: int, flag: str) -> ImageLoadError:
    fix = f"raise {flag}" if flag else "downscale it"
    return ImageLoadError(p, f"image is {size} pixels, over the {max_pixels}-pixel limit; {fix}")


def load_photo(
    path: str | Path,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    pixels_flag: str = "",
    bytes_flag: str = "",
) -> Image.Image:
    """Decode a photo into an RGB PIL image.

    EXIF orientation is applied (phones store rotated pixels plus a tag), alpha
    is composited on white (our gallery views have a white background), and
    greyscale/palette/CMYK images are promoted to RGB. Pixel count is checked
    from the header before decoding, so a decompression bomb never allocates.
    The file is closed on every path (``with``), errors included.

    ``pixels_flag`` and ``bytes_flag`` name the options of the calling command
    that raise the two limits (``--max-pixels``, ``--max-file-bytes``); a
    refusal names them as the fix. Callers without such options leave them
    empty, and the message then names no option.
    """
    p = Path(path)
    check_input_file(p, max_bytes, ImageLoadError, bytes_flag)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # corrupt EXIF is tolerated (the orientation is then ignored); PIL's
            # UserWarnings about it would print stray lines in the CLI
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with _pil_pixel_limit(max_pixels):
                opened = Image.open(p)
            with opened as img:
                if img.format not in PHOTO_FORMATS:
                    raise ImageLoadError(
                        p, f"unsupported image format {img.format}; use JPEG, PNG, WebP or BMP"
                    )
                w, h = img.size
                if w * h > max_pixels:
                    raise _too_many_pixels(p, f"{w}x{h}", max_pixels, pixels_flag)
                if w < 1 or h < 1:
                    raise ImageLoadError(p, "image has no pixels")
                img.load()
                out = ImageOps.exif_transpose(img)  # a new image: valid after the file closes
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(p, "not a readable image (JPEG, PNG, WebP or BMP expected)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _PIL_PIXELS.search(str(exc))
        raise _too_many_pixels(p, found.group(1) if found else "too many", max_pixels, pixels_flag) from None
    except MemoryError:
        raise ImageLoadError(p, "not enough memory to decode the image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated/corrupt streams with these types (tests/test_fuzz.py
        # found no other type in 6000 mutated JPEG/PNG/WebP/BMP files).
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ImageLoadError(p, f"corrupt image ({detail})") from None
    return to_rgb(out)


def to_rgb(img: Image.Image) -> Image.Image:
    """Composite any alpha on white and return an 8-bit RGB image."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img
