"""The one image decoder: untrusted bytes -> the H x W x 3 BGR uint8 array every consumer sees.

- JPEG goes through libjpeg-turbo (simplejpeg, strict: a corrupt stream is an error, not a grey half-image);
  a JPEG it refuses (CMYK, rare markers) and every other format (PNG, BMP, WebP, TIFF, ...) go through
  Pillow. Both give the same pixels for the same baseline JPEG up to libjpeg-turbo's IDCT, and data_load,
  training, evaluation, export and the service all call this function, so they see identical pixels.
- EXIF orientation is applied: the array is the image as a viewer displays it, and boxes refer to that
  grid. data_load records displayed sizes, so annotations made on a rotated photo match its pixels.
- The header is read first: a decompression bomb or an image over `max_pixels` is refused before one pixel
  is decoded. Any failure, whatever the library raises, becomes ImageDecodeError (a client error).
- Grayscale, RGBA, palette, CMYK and 16-bit images become 8-bit BGR (alpha dropped, 16-bit scaled down).
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7700 x 5200; far above any camera frame a detector needs
EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image (empty, not an image, truncated, too large)."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header announces more pixels than allowed (a decompression bomb, or just too big)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # Pillow's name: JPEG, PNG, ...
    width: int  # as displayed (EXIF orientation applied)
    height: int
    orientation: int = 1  # EXIF orientation tag, 1 = none

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open(data: bytes) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty image: no bytes")
    try:
        return Image.open(io.BytesIO(bytes(data)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image too large: {e}") from None
    except Exception as e:  # Pillow's plugins raise many types on hostile headers
        raise ImageDecodeError(f"not an image: {len(data)} bytes in no format Pillow reads "
                               f"(starts with {bytes(data[:8])!r}): {type(e).__name__}") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def _header_of(im: Image.Image, max_pixels: int) -> ImageHeader:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:  # checked on the header, before decoding a single pixel
        raise ImageTooLarge(f"image too large: {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
    o = _orientation(im)
    return ImageHeader(str(im.format), *((h, w) if o >= 5 else (w, h)), orientation=o)


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Format and displayed size from the header alone; ImageDecodeError if unusable."""
    with _quiet():
        im = _open(data)
        with im:
            return _header_of(im, max_pixels)


@contextmanager
def _quiet():
    """Pillow's warnings silenced, except the decompression-bomb one, which becomes an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixel grid -> displayed grid, for EXIF orientation 1..8."""
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.swapaxes(0, 1), 6: lambda x: x.swapaxes(0, 1)[:, ::-1],
           7: lambda x: x.swapaxes(0, 1)[::-1, ::-1], 8: lambda x: x.swapaxes(0, 1)[::-1]}
    op = ops.get(orientation)
    return a if op is None else np.ascontiguousarray(op(a))


def _pillow_to_bgr(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit grayscale -> 8-bit
        a = np.asarray(im)
        a = (a.astype(np.uint32) >> 8).astype(np.uint8) if a.max(initial=0) > 255 else a.clip(0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im)).clip(0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode in ("L", "1"):
        return np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2)
    if im.mode != "RGB":  # RGBA, LA, P, PA, CMYK, YCbCr, RGB;16 ...
        im = im.convert("RGB")
    return np.asarray(im)[..., ::-1]


def _decode_jpeg_turbo(data: bytes) -> np.ndarray | None:
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(bytes(data), colorspace="BGR", strict=True, fastdct=False, fastupsample=False)
    except Exception:  # corrupt, truncated, or a JPEG flavour turbo's fast path refuses: Pillow decides
        return None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> H x W x 3 BGR uint8 as displayed (EXIF orientation applied); ImageDecodeError
    (ImageTooLarge for oversized headers) for anything unusable."""
    with _quiet():
        im = _open(data)
        with im:
            header = _header_of(im, max_pixels)
            pixels = _decode_jpeg_turbo(data) if header.format == "JPEG" else None
            if pixels is None:
                try:
                    im.load()
                    pixels = _pillow_to_bgr(im)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    raise ImageTooLarge(f"image too large: {e}") from None
                except Exception as e:  # truncated / corrupt data, unsupported modes, plugin bugs
                    raise ImageDecodeError(f"corrupt or truncated {header.format} image "
                                           f"({im.size[0]}x{im.size[1]}): {type(e).__name__}: {e}") from None
    return np.ascontiguousarray(apply_orientation(pixels, header.orientation))


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """decode_image of a file's bytes."""
    return decode_image(Path(path).read_bytes(), max_pixels)
