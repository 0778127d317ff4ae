"""Decode untrusted image bytes into the BGR uint8 array the model expects, with clear errors.

Pillow reads the header first, so a decompression bomb is refused before any pixel is decoded; a truncated
file fails at decode instead of yielding a half-grey image. Grayscale, RGBA, palette, CMYK and 16-bit images
are converted to 8-bit BGR (alpha dropped, 16-bit scaled down). EXIF orientation is NOT applied: boxes refer
to the stored pixel grid, as COCO annotations do.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7700 x 5200; far above any camera frame a detector needs


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image (empty, not an image, truncated, too large)."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header announces more pixels than allowed (a decompression bomb, or just too big)."""


def _to_bgr(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit grayscale -> 8-bit
        a = np.asarray(im)
        a = (a.astype(np.uint32) >> 8).astype(np.uint8) if a.max(initial=0) > 255 else a.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode == "F":
        a = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode in ("L", "1"):
        a = np.asarray(im.convert("L"))
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode != "RGB":  # RGBA, LA, P, PA, CMYK, YCbCr, RGB;16 ...
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im)[..., ::-1])


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError) as e:
        raise ImageDecodeError(f"not a readable image: {e}") from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes (JPEG, PNG, BMP, WebP, TIFF, ...) -> H x W x 3 BGR uint8; ImageDecodeError if unusable."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty image: the request carried no bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. palette-with-transparency notes
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(bytes(data)))
        except UnidentifiedImageError:
            raise ImageDecodeError(f"not an image: {len(data)} bytes in no format Pillow reads "
                                   f"(starts with {bytes(data[:8])!r})") from None
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"image too large: {e}") from None
        except OSError as e:
            raise ImageDecodeError(f"unreadable image: {e}") from None
        with im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:  # checked on the header, before decoding a single pixel
                raise ImageTooLarge(f"image too large: {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
                raise ImageDecodeError(f"corrupt or truncated {im.format} image ({w}x{h}): {e}") from None
            except Image.DecompressionBombError as e:
                raise ImageTooLarge(f"image too large: {e}") from None
            return _to_bgr(im)
