"""An uploaded photo through the same checks and limits as ``ftspl query``.

The bytes are checked against the byte cap, then decoded by
:func:`ftspl.engine.loading.photos.load_photo` itself, from a private temporary
file, so EXIF rotation, alpha, colour modes, the pixel cap and every
corrupt-file rule are the CLI's. A refused photo is over a cap
(:class:`ImageTooLargeError`, answered 413) or unreadable
(:class:`ImageLoadError`, answered 400). The client's file name is only
ever a label in messages: it never becomes a path.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings

from PIL import Image

from ftspl.engine.errors import ImageLoadError, ImageTooLargeError

_UNSAFE = re.compile(r"[^\w .,()+=@-]")
#: uploads are written to memory-backed storage when the system has it
_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def display_name(filename: str | None, index: int) -> str:
    """A short printable label for an upload: its base name, or ``photo-N``."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip()[:80]
    return name or f"photo-{index + 1}"


def _check_pixels(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse an image whose header says it is over the pixel cap, before anything is decoded."""
    from ftspl.engine.loading.photos import _pil_pixel_limit

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _pil_pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError:  # PIL refused it for its size alone: far over the cap
        raise ImageTooLargeError(name, f"image has more than {max_pixels} pixels, over the limit") from None
    except Exception:  # noqa: BLE001 - not an image at all: load_photo below says why
        return
    if w * h > max_pixels:
        raise ImageTooLargeError(name, f"image is {w}x{h} pixels, over the {max_pixels}-pixel limit")


def decode_upload(data: bytes, name: str, max_bytes: int, max_pixels: int):
    """Decode one uploaded photo into an RGB PIL image, or raise with ``name: reason``."""
    from ftspl.engine.loading.photos import load_photo

    if not data:
        raise ImageLoadError(name, "file is empty")
    if len(data) > max_bytes:
        raise ImageTooLargeError(name, f"file is {len(data)} bytes, over the limit of {max_bytes}")
    with tempfile.NamedTemporaryFile(prefix="ftspl-upload-", suffix=".img", dir=_TMP) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_photo(tmp.name, max_pixels=max_pixels, max_bytes=max_bytes)
        except ImageLoadError as exc:
            # refused: over the pixel cap (413) or unreadable (400)? The header says, and the
            # happy path never pays for reading it twice. Messages name the upload, not our file.
            _check_pixels(data, name, max_pixels)
            raise ImageLoadError(name, exc.reason) from None


__all__ = ["decode_upload", "display_name"]
